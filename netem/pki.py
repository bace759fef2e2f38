"""The lab's certificate authority, made at run time: one CA, one server certificate.

TLS in the lab must be real TLS (the same handshake, records and ciphers a browser meets in
production) without a certificate ever written into the repository. `make_lab_pki(dir)`
generates, in a directory of the caller's (a temporary one by default):

    ca.pem       the CA certificate: what a client trusts (`--cacert`, Python's cafile,
                 an NSS database for Chromium)
    server.pem   the server certificate, for localhost, 127.0.0.1 and ::1, then the CA
                 (the chain a server sends)
    server.key   its private key (mode 0600)

Keys are ECDSA P-256, as Let's Encrypt and most CDNs serve today: the handshake then costs
one P-256 signature, not an RSA-2048 one, which is what a production edge pays. The server
certificate is valid for 7 days (far under the 398 days browsers accept), starting an hour
ago so that a clock a little behind does not refuse it.

`spki_sha256(cert)` is the base64 SHA-256 of the certificate's public key, the form
Chromium's `--ignore-certificate-errors-spki-list` takes.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

HOSTS = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 7


@dataclasses.dataclass(frozen=True)
class LabPKI:
    """Where the files of one generated CA are."""

    directory: Path
    ca_cert: Path
    cert: Path  # server certificate chain (leaf, then CA)
    key: Path
    hosts: tuple[str, ...]

    def server_context(self, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
        """An SSLContext for a server presenting the lab's certificate (TLS 1.2 and 1.3)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.set_alpn_protocols(list(alpn))
        return ctx

    def spki_sha256(self) -> str:
        """base64(SHA-256(SubjectPublicKeyInfo)) of the server certificate."""
        return spki_sha256(self.cert.read_bytes())


def make_lab_pki(
    directory: Path | None = None, hosts: Sequence[str] = HOSTS, valid_days: int = VALID_DAYS
) -> LabPKI:
    """Generate a CA and a server certificate for `hosts` into `directory` (made if None)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory or tempfile.mkdtemp(prefix="pushlab-pki-"))
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=valid_days)

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pushlab"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"pushlab lab CA {now:%Y-%m-%d %H:%M:%S}")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    pki = LabPKI(
        directory,
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        tuple(hosts),
    )
    pki.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    pki.cert.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    fd = os.open(pki.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    # nginx run by root reads keys as root (the master); Caddy and the server are our children
    directory.chmod(0o711)
    return pki


def spki_sha256(cert_pem: bytes) -> str:
    """base64 SHA-256 of the first certificate's SubjectPublicKeyInfo in `cert_pem`."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


# --- the WebTransport endpoint's self-signed certificate ---------------------------------

WT_VALID_DAYS = 10.0
WT_MAX_DAYS = 14  # Chromium's serverCertificateHashes: "the validity period [...] 2 weeks"


@dataclasses.dataclass(frozen=True)
class WebTransportCertificate:
    """A self-signed leaf a browser accepts by its hash alone (W3C WebTransport,
    `serverCertificateHashes`: an X.509v3 certificate, valid at most 14 days, whose key is
    ECDSA P-256 in Chromium; no CA, no name check, only the SHA-256 of its DER)."""

    cert_pem: bytes
    key_pem: bytes
    sha256_hex: str  # SHA-256 of the certificate's DER, as `QuicSettings.cert_sha256` pins it
    sha256_b64: str  # the same digest base64, as a page hands it to `new WebTransport()`
    not_before: datetime.datetime
    not_after: datetime.datetime

    def write(self, directory: Path) -> tuple[Path, Path]:
        """(cert, key) PEM files in `directory` (the key mode 0600), for a TLS library
        that reads files (aioquic's `load_cert_chain` does)."""
        cert, key = directory / "wt.pem", directory / "wt.key"
        cert.write_bytes(self.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.key_pem)
        return cert, key


def make_webtransport_certificate(
    hosts: Sequence[str] = HOSTS, valid_days: float = WT_VALID_DAYS
) -> WebTransportCertificate:
    """A fresh self-signed ECDSA P-256 certificate for `hosts`, valid `valid_days` (at most
    14) from an hour ago, and its SHA-256 (hex and base64). In memory: nothing is written."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not 0 < valid_days <= WT_MAX_DAYS:
        raise ValueError(f"a hash-pinned certificate lives at most {WT_MAX_DAYS} days")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)  # X.509 keeps seconds
    # the hour before now counts against the 14 days (Chromium checks not_after - not_before)
    start = now - datetime.timedelta(hours=1)
    end = start + datetime.timedelta(days=valid_days)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pushlab"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"pushlab webtransport {hosts[0]}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()  # version 3 is the builder's default and only choice
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return WebTransportCertificate(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        digest.hex(),
        base64.b64encode(digest).decode(),
        start,
        end,
    )
