"""Throw-away TLS certificates for tests: a CA, and a server and a client certificate.

The Python twin of ``cluster/tls/make_certs.sh``, for tests that should not depend on the
``openssl`` command. Keys are ECDSA P-256 (fast to generate); certificates carry the subject
alternative names ``localhost`` and ``127.0.0.1``. Not for production: the CA key is left
unencrypted next to the certificates.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from pathlib import Path

from dimplicit.distributed.local import LOCALHOST
from dimplicit.distributed.tls import TLSConfig

try:  # the ``test`` extra; importing this module must work without it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:  # pragma: no cover - depends on the environment
    x509 = None

__all__ = ["CertificateSet", "make_test_certificates"]


@dataclasses.dataclass(frozen=True)
class CertificateSet:
    """Files written by :func:`make_test_certificates`.

    Attributes
    ----------
    directory : Path
        Where the PEM files are.
    ca_file : Path
        The CA certificate (``ca.pem``); its key is ``ca-key.pem``.
    server : TLSConfig
        Credentials for the scheduler and workers (``server.pem``, valid for serving *and*
        connecting, since workers also dial the scheduler).
    client : TLSConfig
        Credentials for a client (``client.pem``, client authentication only).
    """

    directory: Path
    ca_file: Path
    server: TLSConfig
    client: TLSConfig


@dataclasses.dataclass(frozen=True)
class _Issuer:
    """What every certificate of one set shares: the signing CA and the validity period."""

    directory: Path
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    not_before: datetime.datetime
    not_after: datetime.datetime

    def builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey):
        """A certificate builder with the fields that the CA and the leaves share."""
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.not_before)
            .not_valid_after(self.not_after)
        )

    def write_key(self, key: ec.EllipticCurvePrivateKey, name: str) -> Path:
        path = self.directory / name
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Create with 0600 directly: the key must never be world-readable, even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return path

    def write_cert(self, cert: x509.Certificate, name: str) -> Path:
        path = self.directory / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dimplicit test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _make_ca(directory: Path, days: int) -> tuple[_Issuer, Path]:
    """Write ``ca.pem`` and ``ca-key.pem``; return the issuer and the certificate's path."""
    # Backdate a little so that small clock differences between hosts do not matter.
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = _Issuer(
        directory, _name("dimplicit test CA"), key, now, now + datetime.timedelta(days=days)
    )
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        issuer.builder(issuer.name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    ca_file = issuer.write_cert(cert, "ca.pem")
    issuer.write_key(key, "ca-key.pem")
    return issuer, ca_file


def _make_leaf(
    issuer: _Issuer, ca_file: Path, common_name: str, usages: list, stem: str
) -> TLSConfig:
    """Write ``<stem>.pem`` and ``<stem>-key.pem``, signed by ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCALHOST))]
    ca_key_id = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
    cert = (
        issuer.builder(_name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(ca_key_id, False)
        .sign(issuer.key, hashes.SHA256())
    )
    return TLSConfig(
        ca_file, issuer.write_cert(cert, f"{stem}.pem"), issuer.write_key(key, f"{stem}-key.pem")
    )


def make_test_certificates(directory: str | Path, *, days: int = 30) -> CertificateSet:
    """Write a throw-away CA and a server and client certificate signed by it.

    Parameters
    ----------
    directory : str or Path
        Created if missing. Files: ``ca.pem``, ``ca-key.pem``, ``server.pem``,
        ``server-key.pem``, ``client.pem``, ``client-key.pem`` (keys are mode 0600).
    days : int, default 30
        Validity period.

    Returns
    -------
    CertificateSet

    Raises
    ------
    RuntimeError
        The ``cryptography`` package is not installed.
    """
    if x509 is None:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "make_test_certificates needs the 'cryptography' package: pip install cryptography "
            "(or use cluster/tls/make_certs.sh, which uses openssl)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    issuer, ca_file = _make_ca(directory, days)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    server = _make_leaf(issuer, ca_file, "dimplicit scheduler/worker", usages, "server")
    client = _make_leaf(
        issuer, ca_file, "dimplicit client", [ExtendedKeyUsageOID.CLIENT_AUTH], "client"
    )
    return CertificateSet(directory=directory, ca_file=ca_file, server=server, client=client)
