"""The server key and the sealing of API key secrets under it.

The server must recover each key's secret (zhipuai signs its JWTs with it, so a hash would not do),
so secrets are stored encrypted with AES-256-GCM under a 32-byte server key that lives outside the
database: a copy of the database alone yields no usable key. The key id is the associated data, so
a ciphertext moved to another row no longer decrypts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cogserve.errors import ConfigError, KeyUnreadable

SERVER_KEY_BYTES = 32
_VERSION = b"\x01"
_NONCE_BYTES = 12


def parse_server_key(value: str) -> bytes:
    """Decode a server key given as text: 64 hex digits, or base64 (standard or URL-safe)."""
    text = value.strip()
    key: bytes | None = None
    if len(text) == 2 * SERVER_KEY_BYTES:
        with contextlib.suppress(ValueError):
            key = bytes.fromhex(text)
    if key is None:
        padded = text + "=" * (-len(text) % 4)
        with contextlib.suppress(binascii.Error, ValueError):
            key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    if key is None or len(key) != SERVER_KEY_BYTES:
        raise ConfigError(
            f"the server key must be {SERVER_KEY_BYTES} bytes written as 64 hex digits or as base64 "
            "(e.g. the output of `openssl rand -base64 32`)"
        )
    return key


def load_or_create_server_key(path: Path) -> bytes:
    """Read the key file, creating it (mode 0600, base64 text) if it does not exist.

    Creation is atomic: the key is written and fsynced under a temporary name, then hard-linked
    into place, which fails if another process got there first; that process's key is then used.
    """
    try:
        return parse_server_key(path.read_text("ascii"))
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the server key {path}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc

    try:
        _create_key_file(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the server key {path}: {exc}") from exc
    return parse_server_key(path.read_text("ascii"))


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask could only have narrowed it; be exact
            os.write(fd, base64.b64encode(secrets.token_bytes(SERVER_KEY_BYTES)) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SecretBox:
    """AES-256-GCM under the server key. A sealed value is ``version | nonce | ciphertext+tag``."""

    def __init__(self, server_key: bytes) -> None:
        if len(server_key) != SERVER_KEY_BYTES:
            raise ConfigError(f"the server key must be {SERVER_KEY_BYTES} bytes, got {len(server_key)}")
        self._aead = AESGCM(server_key)

    def seal(self, secret: bytes, *, key_id: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, secret, _associated(key_id))

    def open(self, sealed: bytes, *, key_id: str) -> bytes:
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        if sealed[:1] == _VERSION and len(nonce) == _NONCE_BYTES:
            with contextlib.suppress(InvalidTag):
                return self._aead.decrypt(nonce, body, _associated(key_id))
        raise KeyUnreadable(
            f"cannot decrypt the secret of API key {key_id}: the server key differs from the one "
            "it was created under, or the row was altered"
        )


def _associated(key_id: str) -> bytes:
    return b"cogserve api key v1:" + key_id.encode()
