"""The fast path for an agent's XML-RPC reply: the plain subset an agent sends, without an XML tree.

An agent's ``get_state`` reply is ``xmlrpc.client``'s own marshalling of a
struct of scalars, one struct of scalars and one array of strings. One
regular expression splits the body into tokens, each either a whole scalar
``<member>`` (its name, type and text) or one bare tag, and a short
recursive descent turns them into Python values: about a third of the time
of building an lxml tree and walking it.

It accepts only what it can read exactly as the reference parser
(``xmlrpc.client`` behind defusedxml) does, and raises :class:`NotPlain`
for anything else: a non-ASCII byte, an entity or character reference, a
CR (XML would normalise it), a control character, a CDATA end, a comment,
a DOCTYPE or processing instruction, an attribute, text where XML-RPC has
none, an unknown type, a fault. The caller then asks the reference parser,
which gives the verdict and the words: this path only saves time, it never
changes a result. Pure functions, no state, no threads.
"""

from __future__ import annotations

import re
from typing import Callable, Iterator

# A scalar member whole (name, type, text, or the text of an untyped value),
# or one bare tag (slash, name); each token is followed by the text up to the next.
_TOKEN = re.compile(
    rb"<member>\s*<name>([^<]*)</name>\s*<value>(?:<(string|int|i4|i8|double|boolean)>([^<]*)</\2>|([^<]*))"
    rb"</value>\s*</member>"
    rb"|<(/?)([A-Za-z0-9.]+)>")
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_PROLOG = re.compile(rb"<\?xml version=(?:'1\.0'|\"1\.0\")(?: encoding=(?:'(?i:utf-8)'|\"(?i:utf-8)\"))?\s*\?>")

Token = tuple  # (name, type, text, untyped text, slash, tag, text after): the first four set for a member


class NotPlain(ValueError):
    """The reply is outside the plain subset: the reference parser must read it."""


def _boolean(text: bytes) -> bool:
    if text == b"1":
        return True
    if text == b"0":
        return False
    raise NotPlain("a boolean other than 0 or 1")


def _string(text: bytes) -> str:
    if b"<" in text:
        raise NotPlain("markup inside a value")
    return text.decode()


_SCALARS: dict[bytes, Callable[[bytes], object]] = {
    b"int": int, b"i4": int, b"i8": int, b"double": float, b"boolean": _boolean, b"string": _string}


def _scalar(kind: bytes, text: bytes) -> object:
    """The value of ``<kind>text</kind>``."""
    convert = _SCALARS.get(kind)
    if convert is None:
        raise NotPlain("a type outside the plain subset")
    if b"<" in text:
        raise NotPlain("markup inside a value")
    try:
        return convert(text)
    except ValueError:
        raise NotPlain(f"not a plain {kind.decode()}") from None


def _blank(text: bytes) -> None:
    if text and not text.isspace():
        raise NotPlain("text between elements")


def _open(tokens: Iterator[Token], tag: bytes) -> bytes:
    """Take the opening ``<tag>``; return the text after it."""
    name, _, _, _, slash, got, after = next(tokens)
    if name is not None or slash or got != tag:
        raise NotPlain(f"expected <{tag.decode()}>")
    return after


def _close(tokens: Iterator[Token], tag: bytes) -> bytes:
    """Take the closing ``</tag>``; return the text after it."""
    name, _, _, _, slash, got, after = next(tokens)
    if name is not None or not slash or got != tag:
        raise NotPlain(f"expected </{tag.decode()}>")
    return after


def _value(tokens: Iterator[Token], text: bytes) -> tuple[object, bytes]:
    """The value after a ``<value>`` followed by ``text``; returns it and the text after ``</value>``."""
    name, _, _, _, slash, tag, after = next(tokens)
    if name is not None:
        raise NotPlain("a member outside a struct")
    if slash:  # <value>text</value>: a string
        if tag != b"value":
            raise NotPlain("unbalanced value")
        return _string(text), after
    _blank(text)
    if tag == b"struct":
        _blank(after)
        out: object = _struct(tokens)
    elif tag == b"array":
        _blank(after)
        _blank(_open(tokens, b"data"))
        out = _array(tokens)
        _blank(_close(tokens, b"array"))
    else:
        out = _scalar(tag, after)
        _blank(_close(tokens, tag))
    return out, _close(tokens, b"value")


def _struct(tokens: Iterator[Token]) -> dict:
    out = {}
    for name, kind, text, untyped, slash, tag, after in tokens:
        if after and not after.isspace():
            raise NotPlain("text between elements")
        if name is not None:  # a scalar member, whole: the pattern leaves no markup in its parts
            # Strings written out, as most members are (a session is five): this loop is the reply's time.
            if kind is None:
                out[name.decode()] = untyped.decode()
            elif kind == b"string":
                out[name.decode()] = text.decode()
            else:
                out[name.decode()] = _scalar(kind, text)
        elif slash:
            if tag != b"struct":
                raise NotPlain("unbalanced struct")
            return out
        elif tag == b"member":
            key = _string(_open(tokens, b"name"))
            _blank(_close(tokens, b"name"))
            out[key], rest = _value(tokens, _open(tokens, b"value"))
            _blank(rest)
            _blank(_close(tokens, b"member"))
        else:
            raise NotPlain("unexpected struct content")
    raise NotPlain("unclosed struct")


def _array(tokens: Iterator[Token]) -> list:
    out = []
    for name, _, _, _, slash, tag, after in tokens:
        if name is not None:
            raise NotPlain("a member inside an array")
        if slash:
            if tag != b"data":
                raise NotPlain("unbalanced array")
            _blank(after)
            return out
        if tag != b"value":
            raise NotPlain("unexpected array content")
        value, rest = _value(tokens, after)
        _blank(rest)
        out.append(value)
    raise NotPlain("unclosed array")


def loads(body: bytes) -> object:
    """The one value of a plain XML-RPC response ``body``; raises :class:`NotPlain` for anything else."""
    if not body.isascii() or b"&" in body or b"\r" in body or b"]]>" in body or _CONTROL.search(body):
        raise NotPlain("a character the reference parser must judge")
    prolog = _PROLOG.match(body)
    parts = _TOKEN.split(body[prolog.end():] if prolog else body)
    _blank(parts[0])
    each = iter(parts[1:])
    tokens = zip(each, each, each, each, each, each, each)
    try:
        _blank(_open(tokens, b"methodResponse"))
        _blank(_open(tokens, b"params"))
        _blank(_open(tokens, b"param"))
        value, rest = _value(tokens, _open(tokens, b"value"))
        _blank(rest)
        _blank(_close(tokens, b"param"))
        _blank(_close(tokens, b"params"))
        _blank(_close(tokens, b"methodResponse"))
    except StopIteration:
        raise NotPlain("the reply ends too soon") from None
    if next(tokens, None) is not None:
        raise NotPlain("more after the response")
    return value


__all__ = ["NotPlain", "loads"]
