"""TSIG key files for the DNS arbiter.

Two formats are read:

* BIND's ``key`` statement, as written by ``tsig-keygen`` or ``ddns-confgen``::

      key "lbkey" {
          algorithm hmac-sha256;
          secret "base64...";
      };

  A file may hold several keys; ``key-name`` picks one (it is required then).
* a bare base64 secret on one line (``key-name`` must come from the config),
  or ``KEYNAME:SECRET`` as the WMS arbiter's ``DNS_KEYSTRING`` held it.

The secret never appears in an exception message, a ``repr`` or a log line.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.tsig

from common.atomicfile import write_atomic
from common.secretfile import permission_problem

MAX_KEY_FILE_BYTES = 64 * 1024

#: Algorithm names accepted in lbsconfig.xml and key files, and dnspython's names for them.
ALGORITHMS: dict[str, dns.name.Name] = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}

_KEY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*\.?\Z")
_KEY_STMT = re.compile(r'key\s+("([^"]*)"|([^\s{]+))\s*\{(.*?)\}\s*;', re.S)
_CLAUSE = re.compile(r'\s*([A-Za-z-]+)\s+("([^"]*)"|([^;\s]+))\s*;', re.S)


class KeyFileError(Exception):
    """A key file that cannot be used; ``str()`` is ``FILE[:LINE]: message``, without the secret."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key: name, algorithm (e.g. ``hmac-sha256``) and the decoded secret (hidden from repr)."""

    name: str
    algorithm: str
    secret: bytes = field(repr=False)

    def dns_key(self) -> dns.tsig.Key:
        """The dnspython key object used to sign messages."""
        return dns.tsig.Key(self.name, self.secret, ALGORITHMS[self.algorithm])


def normalize_algorithm(name: str) -> str | None:
    """``HMAC-SHA256`` / ``hmac-sha256.`` / ``hmac-md5.sig-alg.reg.int`` -> canonical name, None if unknown."""
    low = name.strip().strip('"').lower().rstrip(".")
    if low.startswith("hmac-md5.sig-alg.reg.int"):
        low = "hmac-md5"
    return low if low in ALGORITHMS else None


def decode_secret(text: str) -> bytes:
    """Decode a base64 secret; ValueError (never showing the secret) when it is not base64."""
    cleaned = "".join(text.split())
    if not cleaned:
        raise ValueError("the secret is empty")
    try:
        raw = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret is not valid base64") from None
    if not raw:
        raise ValueError("the secret is empty")
    return raw


def _strip_comments(text: str) -> str:
    """Blank out BIND comments (``//``, ``#``, ``/* */``) keeping line numbers and quoted strings."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = text.find('"', i + 1)
            j = n - 1 if j < 0 else j
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "#" or text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def parse_key_text(text: str, path: str, key_name: str | None = None,
                   algorithm: str | None = None) -> TsigKey:
    """Parse a key file's text (see the module docstring for the formats).

    ``key_name`` chooses among several BIND keys and names a bare secret;
    ``algorithm`` is used for a bare secret (a BIND key carries its own).
    Raises :class:`KeyFileError`.
    """
    clean = _strip_comments(text)
    if re.search(r"\bkey\s", clean):
        return _parse_bind(clean, path, key_name)
    return _parse_bare(clean, path, key_name, algorithm)


def _parse_bind(clean: str, path: str, key_name: str | None) -> TsigKey:
    keys: list[tuple[str, int, str, int]] = []
    for m in _KEY_STMT.finditer(clean):
        keys.append((m.group(2) if m.group(2) is not None else m.group(3), _line_of(clean, m.start()),
                     m.group(4), m.start(4)))
    if not keys:
        line = _line_of(clean, re.search(r"\bkey\s", clean).start())
        raise KeyFileError(path, line, 'unparsable key statement; expected key "NAME" { algorithm ALG; secret "BASE64"; };')
    wanted = key_name.rstrip(".").lower() if key_name else None
    if wanted is None:
        if len(keys) > 1:
            raise KeyFileError(path, keys[1][1], f"the file holds {len(keys)} keys "
                               f"({', '.join(k[0] for k in keys)}): set key-name in <dns> to choose one")
        chosen = keys[0]
    else:
        found = [k for k in keys if k[0].rstrip(".").lower() == wanted]
        if not found:
            raise KeyFileError(path, None, f"no key named {key_name!r} in the file "
                               f"(it holds: {', '.join(k[0] for k in keys)})")
        chosen = found[0]
    name, line, body, body_pos = chosen
    clauses: dict[str, tuple[str, int]] = {}
    pos = 0
    while pos < len(body):
        if not body[pos:].strip():
            break
        m = _CLAUSE.match(body, pos)
        if not m:
            raise KeyFileError(path, _line_of(clean, body_pos + pos),
                               f"key {name!r}: unparsable clause (expected 'algorithm ALG;' and 'secret \"BASE64\";')")
        value = m.group(3) if m.group(3) is not None else m.group(4)
        clauses[m.group(1).lower()] = (value, _line_of(clean, body_pos + m.start(1)))
        pos = m.end()
    if "algorithm" not in clauses:
        raise KeyFileError(path, line, f"key {name!r} has no algorithm clause")
    if "secret" not in clauses:
        raise KeyFileError(path, line, f"key {name!r} has no secret clause")
    alg_raw, alg_line = clauses["algorithm"]
    alg = normalize_algorithm(alg_raw)
    if alg is None:
        raise KeyFileError(path, alg_line, f"key {name!r}: unknown algorithm {alg_raw!r} "
                           f"(supported: {', '.join(ALGORITHMS)})")
    try:
        secret = decode_secret(clauses["secret"][0])
    except ValueError as exc:
        raise KeyFileError(path, clauses["secret"][1], f"key {name!r}: {exc}") from None
    _check_name(name, path, line)
    return TsigKey(name=name, algorithm=alg, secret=secret)


def _parse_bare(clean: str, path: str, key_name: str | None, algorithm: str | None) -> TsigKey:
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(clean.splitlines()) if ln.strip()]
    if not lines:
        raise KeyFileError(path, None, "the file is empty (expected a BIND key statement or a base64 secret)")
    if len(lines) > 1:
        raise KeyFileError(path, lines[1][0], "unexpected second line: a bare key file holds one base64 secret")
    lineno, value = lines[0]
    name = key_name
    alg = "hmac-sha256" if algorithm is None else normalize_algorithm(algorithm)
    if alg is None:
        raise KeyFileError(path, None, f"unknown algorithm {algorithm!r} (supported: {', '.join(ALGORITHMS)})")
    parts = value.split(":")
    if len(parts) == 3:          # nsupdate -y style ALG:NAME:SECRET
        alg_p = normalize_algorithm(parts[0])
        if alg_p is None:
            raise KeyFileError(path, lineno, f"unknown algorithm {parts[0]!r} (supported: {', '.join(ALGORITHMS)})")
        alg, name, value = alg_p, parts[1], parts[2]
    elif len(parts) == 2:        # KEYNAME:SECRET, the WMS arbiter's DNS_KEYSTRING
        name, value = parts
    elif len(parts) > 3:
        raise KeyFileError(path, lineno, "unparsable key line (expected BASE64, NAME:BASE64 or ALG:NAME:BASE64)")
    if not name:
        raise KeyFileError(path, lineno, "the file holds a bare secret: set key-name in <dns> "
                           "(the key's name as the DNS server knows it)")
    try:
        secret = decode_secret(value)
    except ValueError as exc:
        raise KeyFileError(path, lineno, str(exc)) from None
    _check_name(name, path, lineno)
    return TsigKey(name=name, algorithm=alg, secret=secret)


def key_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a TSIG key name, or None when it can.

    A key name is a DNS name of letters, digits, ``_``, ``-`` and dots
    (labels of at most 63 characters, 255 in all): nothing that could end a
    quoted string or a statement in a BIND key file.
    """
    if not _KEY_NAME.match(name):
        return (f"key name {name[:80]!r} is not a valid DNS name (only letters, digits, '.', '-' and '_'; "
                "it may not start with '.' or '-')")
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        return f"key name {name[:80]!r} is not a valid DNS name ({exc})"
    return None


def _check_name(name: str, path: str, line: int | None) -> None:
    problem = key_name_problem(name)
    if problem:
        raise KeyFileError(path, line, problem)


def load_key(path: str, key_name: str | None = None, algorithm: str | None = None) -> TsigKey:
    """Read and parse the key file at ``path``; raise :class:`KeyFileError` on any problem."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(path, None, f"cannot read key file: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(path, None, f"key file is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(path, None, "key file is not text (UTF-8)") from None
    return parse_key_text(text, path, key_name, algorithm)


def permission_warning(path: str) -> str | None:
    """A warning when a secret file is open to others (see :func:`common.secretfile.permission_problem`), else None."""
    return permission_problem(path)


def format_bind_key(name: str, algorithm: str, secret_b64: str) -> str:
    """A BIND ``key`` statement (the text of a key file).

    Raises ValueError (without the secret) when a part could break the
    statement's syntax: a bad key name, an unknown algorithm or a secret
    that is not base64.
    """
    problem = key_name_problem(name)
    if problem:
        raise ValueError(problem)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown TSIG algorithm {algorithm[:40]!r}")
    if not re.fullmatch(r"[A-Za-z0-9+/=]+", secret_b64):
        raise ValueError("the secret is not valid base64")
    return f'key "{name}" {{\n\talgorithm {algorithm};\n\tsecret "{secret_b64}";\n}};\n'


def write_key_file(path: str, name: str, algorithm: str, secret_b64: str) -> None:
    """Write a BIND-format key file with mode 0600, atomically (never world-readable, even briefly)."""
    write_atomic(path, format_bind_key(name, algorithm, secret_b64), 0o600)
