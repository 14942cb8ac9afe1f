"""A throwaway certificate authority, so discord.py reaches the fake voice server over wss://.

discord.py opens the voice websocket at `wss://{endpoint}/?v=8` with aiohttp's default,
verifying TLS context, which aiohttp builds once when it is imported, from the OpenSSL default
paths: so `SSL_CERT_FILE` must name a bundle holding the test authority before aiohttp is
imported. `trust_test_authority()` does that (the repository's top-level conftest.py calls it
before anything imports aiohttp); the bundle also carries the system's authorities, so nothing
else in the process loses its trust store. Production code has no test-only path: it verifies
certificates as it would against Discord.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import os
import shutil
import ssl
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_LIFETIME = datetime.timedelta(days=2)
SERVER_HOSTS = ("localhost", "127.0.0.1")

_authority: TestAuthority | None = None


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class TestAuthority:
    """A CA key and certificate in `directory`, able to issue server certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        public = self._key.public_key()
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name("Parley test authority"))
            .issuer_name(_name("Parley test authority"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CERT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = directory / "test-authority.pem"
        self.ca_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def server_context(self, hosts: tuple[str, ...] = SERVER_HOSTS) -> ssl.SSLContext:
        """A server-side TLS context with a fresh certificate for `hosts`, issued by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CERT_LIFETIME)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        stem = self.directory / f"server-{certificate.serial_number:x}"
        cert_file, key_file = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        return context


def trust_test_authority() -> TestAuthority:
    """Create the process's test CA and point `SSL_CERT_FILE` at a bundle that trusts it.

    Must run before aiohttp is imported (it reads the trust store once, at import).
    """
    global _authority
    if _authority is not None:
        return _authority
    if "aiohttp" in sys.modules:
        raise RuntimeError(
            "trust_test_authority() must run before aiohttp is imported: aiohttp builds its "
            "TLS context at import time"
        )
    directory = Path(tempfile.mkdtemp(prefix="parley-test-ca-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    authority = TestAuthority(directory)
    bundle = directory / "bundle.pem"
    system = ssl.get_default_verify_paths()
    existing = os.environ.get("SSL_CERT_FILE") or system.cafile or system.openssl_cafile
    parts = [authority.ca_file.read_bytes()]
    if existing and Path(existing).is_file():
        parts.append(Path(existing).read_bytes())
    bundle.write_bytes(b"\n".join(parts))
    os.environ["SSL_CERT_FILE"] = str(bundle)
    _authority = authority
    return authority


def installed_authority() -> TestAuthority:
    """The authority `trust_test_authority()` installed."""
    if _authority is None:
        raise RuntimeError("the test authority is not installed (see the top-level conftest.py)")
    return _authority
