"""TLS contexts for the agent channel: the agent's server side and the balancer's client side.

Both refuse anything older than TLS 1.2. Contexts are built once per
configuration load (loading certificates is costly; a context is shared by
every connection) and errors are raised as :class:`TlsConfigError` naming the
file, so ``--check-config`` reports them.
"""

from __future__ import annotations

import ssl


class TlsConfigError(Exception):
    """A certificate, key or CA file that cannot be used; the message names the file."""


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def server_context(cert_file: str, key_file: str | None = None) -> ssl.SSLContext:
    """A server-side context presenting ``cert_file`` (PEM chain) and ``key_file``.

    Without ``key_file`` the private key is read from ``cert_file``.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(f"the key in {key_file or cert_file} does not belong to the certificate "
                                 f"in {cert_file}") from None
        raise TlsConfigError(f"cannot load certificate {cert_file} with key {key_file or cert_file}: "
                             f"{_reason(exc)} (expected PEM files)") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot load certificate {cert_file} with key {key_file or cert_file}: "
                             f"{_reason(exc)}") from None
    return ctx


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client-side context verifying the server's certificate and host name.

    The certificate must chain to ``ca_file`` (PEM, one or more CA
    certificates) or, without it, to the system's trusted CAs.
    """
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"cannot load CA certificates from {ca_file}: {_reason(exc)} "
                             "(expected PEM certificates)") from None
    except OSError as exc:
        raise TlsConfigError(f"cannot load CA certificates from {ca_file}: {_reason(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


__all__ = ["TlsConfigError", "client_context", "server_context"]
