"""A self-signed development certificate chain for Content Credentials, made on first start.

C2PA refuses to sign with a self-signed certificate, so the chain has two links: a development CA
(P-256, ``keyUsage: keyCertSign``) and the signing certificate it issues (P-256, not a CA,
``keyUsage: digitalSignature``, ``extendedKeyUsage: emailProtection``, as C2PA's profile asks). No
trust list holds the CA, so readers call the images "valid, untrusted": good for development only.

The folder appears whole or not at all: the files are written under a temporary name, then the
folder is renamed into place; a process that loses that race uses the winner's chain.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CHAIN_FILE = "chain.pem"
KEY_FILE = "signer.key"
CA_DAYS = 3650
SIGNER_DAYS = 825


def ensure_dev_chain(directory: Path, organization: str = "cogserve") -> tuple[Path, Path, bool]:
    """The chain and key files in ``directory``, made if absent; and whether they were made now."""
    chain, key = directory / CHAIN_FILE, directory / KEY_FILE
    if chain.exists() and key.exists():
        return chain, key, False
    directory.parent.mkdir(parents=True, exist_ok=True)
    temp = directory.with_name(f".{directory.name}.{secrets.token_hex(8)}.tmp")
    temp.mkdir(mode=0o700)
    try:
        chain_pem, key_pem = make_dev_chain(organization)
        _write(temp / CHAIN_FILE, chain_pem, 0o644)
        _write(temp / KEY_FILE, key_pem, 0o600)
        try:
            os.rename(temp, directory)
        except OSError:
            # Another process made it first (or an empty folder is in the way: then fail below).
            if not (chain.exists() and key.exists()):
                raise
            return chain, key, False
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    with contextlib.suppress(OSError):
        _fsync(directory.parent)
    return chain, key, True


def make_dev_chain(organization: str = "cogserve", *, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """PEM of (signing certificate + CA certificate, signing key as PKCS#8), valid from ``now``."""
    now = now or dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)  # tolerate a reader's clock a little behind ours
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{organization} development CA (untrusted)", organization)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{organization} development signer (untrusted)", organization))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=SIGNER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key_pem


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64]),
        ]
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask could only have narrowed it; be exact
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
