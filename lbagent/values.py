"""Turning the text a custom variable produces into an XML-RPC value.

Pure logic, shared by command, file and constant variables: the first line
of the text is taken, and read as an integer, a decimal number, a boolean
(``true``/``false``) or, failing those, a short string.
"""

from __future__ import annotations

import re

MAX_STRING = 256
# XML-RPC's <int> is 32-bit signed; larger whole numbers travel as <double>.
INT_MIN, INT_MAX = -(2 ** 31), 2 ** 31 - 1

Value = int | float | bool | str

_INT = re.compile(r"^[+-]?[0-9]+$")
_FLOAT = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
# Characters XML 1.0 cannot carry (and terminal escapes): a value holding one
# would break the reply for every client, so such output counts as garbage.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffe\uffff\ud800-\udfff]")


class BadValue(ValueError):
    """Text that cannot be a variable's value; ``str()`` says why."""


def first_line(data: bytes) -> str:
    """Decode ``data`` as UTF-8 and return its first line, stripped.

    Raises :class:`BadValue` for bytes that are not UTF-8.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadValue("output is not UTF-8 text") from None
    return text.split("\n", 1)[0].strip()


def parse_value(text: str) -> Value:
    """Parse one line of text into int, float, bool or str.

    Raises :class:`BadValue` for empty text, control characters, a
    non-finite number or a string longer than :data:`MAX_STRING` characters.
    """
    text = text.strip()
    if not text:
        raise BadValue("empty value")
    if _CONTROL.search(text):
        raise BadValue("value contains control characters")
    if _INT.match(text):
        try:
            number = int(text)
            return number if INT_MIN <= number <= INT_MAX else float(number)
        except (OverflowError, ValueError):  # beyond a double, or beyond int()'s digit limit
            raise BadValue(f"number out of range: {text[:40]!r}") from None
    if _FLOAT.match(text):
        value = float(text)
        if value != value or value in (float("inf"), float("-inf")):
            raise BadValue(f"number out of range: {text[:40]!r}")
        return value
    low = text.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if len(text) > MAX_STRING:
        raise BadValue(f"value longer than {MAX_STRING} characters")
    return text


def parse_output(data: bytes) -> Value:
    """Parse the first line of a command's output or a file's content."""
    return parse_value(first_line(data))
