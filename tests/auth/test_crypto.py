"""The server key file and what a stolen database is worth without it."""

from __future__ import annotations

import base64
import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from cogserve.auth import ApiKeys, KeyUnreadable, SecretBox, load_or_create_server_key, parse_server_key
from cogserve.errors import ConfigError
from cogserve.storage.accounts import AccountStore, ApiKeyRow

KEY = bytes(range(32))


def test_server_key_file_is_created_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "server.key"
    first = load_or_create_server_key(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_server_key(path) == first
    # The file is the base64 an operator can paste into an environment variable.
    assert parse_server_key(path.read_text()) == first
    assert [p.name for p in path.parent.iterdir()] == ["server.key"]  # no temp file left behind


def test_processes_racing_to_create_the_key_all_get_the_same_one(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_server_key(path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert set(results) == {parse_server_key(path.read_text())}


def test_a_damaged_key_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    path.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"server\.key.*32 bytes"):
        load_or_create_server_key(path)
    assert path.read_text() == "not a key\n"  # never silently replaced: that would orphan every key


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        KEY.hex().upper(),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        f"  {base64.b64encode(KEY).decode()}\n",
    ],
)
def test_server_key_accepts_hex_and_base64(text: str) -> None:
    assert parse_server_key(text) == KEY


@pytest.mark.parametrize("text", ["", "short", KEY.hex()[:-2], base64.b64encode(KEY[:16]).decode(), "é" * 44])
def test_server_key_of_the_wrong_size_or_form_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        parse_server_key(text)


def test_the_database_alone_does_not_contain_the_secret(keys: ApiKeys, db_path: Path) -> None:
    _, full = keys.create("alice")
    secret = full.split(".")[1]
    assert secret.encode() not in db_path.read_bytes()


def test_another_server_key_cannot_read_the_secrets(store: AccountStore) -> None:
    key, _ = ApiKeys(store, SecretBox(KEY)).create("alice")
    with pytest.raises(KeyUnreadable, match="server key differs"):
        ApiKeys(store, SecretBox(bytes(32))).lookup(key.id)


def test_a_secret_moved_to_another_row_does_not_decrypt(
    keys: ApiKeys, store: AccountStore, engine: Engine
) -> None:
    mine, _ = keys.create("mine")
    theirs, their_full = keys.create("theirs")
    stolen = store.get_key(theirs.id)
    assert stolen is not None
    with engine.begin() as conn:
        conn.execute(
            update(ApiKeyRow).where(ApiKeyRow.id == mine.id).values(sealed_secret=stolen.sealed_secret)
        )
    with pytest.raises(KeyUnreadable):
        keys.lookup(mine.id)
    found = keys.lookup(theirs.id)
    assert found is not None and found[1] == their_full.split(".")[1].encode()


def test_secret_box_refuses_a_key_of_the_wrong_length() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        SecretBox(b"x" * 16)


def test_a_key_path_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match="server key"):
        load_or_create_server_key(tmp_path / "a-file" / "server.key")
