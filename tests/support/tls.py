"""Throwaway certificate authorities and agent certificates for TLS tests, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _run(*args: str, cwd: Path) -> None:
    res = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"openssl {' '.join(args)}: {res.stderr}"


@dataclass(frozen=True)
class Ca:
    """A certificate authority: its certificate (what balancers trust) and key."""

    cert: Path
    key: Path

    def issue(self, directory: Path, name: str, ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> "Leaf":
        """A server certificate for ``ips``/``dns`` (subjectAltName) signed by this CA; key mode 0600."""
        key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
        _run("req", *EC_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=directory)
        sans = ",".join([f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns])
        ext = directory / f"{name}.ext"
        ext.write_text(f"subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
             "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext), cwd=directory)
        key.chmod(0o600)
        return Leaf(cert=cert, key=key)


@dataclass(frozen=True)
class Leaf:
    """A server certificate and its private key."""

    cert: Path
    key: Path


def make_ca(directory: Path, name: str = "test-ca") -> Ca:
    """A new self-signed CA in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _run("req", "-x509", *EC_KEY, "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return Ca(cert=cert, key=key)
