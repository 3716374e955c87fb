"""``cogserve generate --server URL``: one image through a running server's async API.

Submits ``POST /api/paas/v4/async/images/generations``, polls ``GET /api/paas/v4/async-result/{id}``
with a live progress bar (on stderr, so stdout stays parseable), then downloads the PNG. Ctrl-C and
the overall timeout cancel the task on the server, so an abandoned request stops using the GPU.

A plain HTTP client: free of typer, torch and the server's API and engine modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from cogserve.storage.files import atomic_write

API_PREFIX = "/api/paas/v4"
SUBMIT_PATH = f"{API_PREFIX}/async/images/generations"
RESULT_PATH = f"{API_PREFIX}/async-result/{{id}}"
CANCEL_PATH = f"{API_PREFIX}/async/images/generations/{{id}}/cancel"

#: Exit status after Ctrl-C, as a shell reports a SIGINT death (128 + 2).
EXIT_CANCELLED = 130
#: Polls that may fail to connect in a row (a server restart, a blip) before giving up.
MAX_POLL_TRANSPORT_ERRORS = 5
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class RemoteError(Exception):
    """A failure to report on stderr as it is, exiting with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class RemoteCancelled(RemoteError):
    """The user pressed Ctrl-C; the task (if one was created) was asked to cancel."""

    def __init__(self) -> None:
        super().__init__("cancelled", EXIT_CANCELLED)


@dataclass(frozen=True)
class RemoteRequest:
    """What to ask the server for; ``to_json`` is the async API's request body."""

    prompt: str
    model: str = "cogview-4"
    size: str = "1024x1024"
    quality: str = "standard"
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": self.prompt,
            "size": self.size,
            "quality": self.quality,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        return body


def normalize_server(server: str) -> str:
    """The server's root URL: no trailing slash, and the API prefix dropped if it was given."""
    url = server.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url.removesuffix(API_PREFIX).rstrip("/")


def api_error(response: httpx.Response) -> RemoteError:
    """``error <code>: <message>`` from a BigModel error envelope, or the status and body if not one."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    # The CLI's rule: the server refusing what was asked (400, 413) is bad input, exit 2.
    exit_code = 2 if response.status_code in (400, 413) else 1
    if isinstance(error, dict) and error.get("message"):
        message = f"error {error.get('code', response.status_code)}: {error['message']}"
        return RemoteError(message, exit_code)
    text = response.text.strip()[:200] or response.reason_phrase
    return RemoteError(f"error {response.status_code}: {text}", exit_code)


def transport_error(server: str, exc: httpx.TransportError) -> RemoteError:
    if isinstance(exc, httpx.ConnectError):
        return RemoteError(f"error: cannot connect to the cogserve server at {server} ({exc or 'refused'})")
    if isinstance(exc, httpx.TimeoutException):
        return RemoteError(f"error: the server at {server} did not answer in time")
    return RemoteError(f"error: lost the connection to the server at {server}: {exc}")


def failed_task(task_id: str, error: Any) -> RemoteError:
    """``error <code>: <message>`` for a task that ended in FAIL."""
    if isinstance(error, dict) and error.get("message"):
        return RemoteError(f"error {error.get('code', '?')}: {error['message']}")
    return RemoteError(f"error: task {task_id} failed{f': {error}' if error else ''}")


def describe_content_filter(entries: Any) -> str | None:
    """``user level 3, assistant level 3`` for the response's ``content_filter`` list."""
    if not isinstance(entries, list) or not entries:
        return None
    parts = [
        f"{entry.get('role', '?')} level {entry.get('level', '?')}"
        for entry in entries
        if isinstance(entry, dict)
    ]
    return ", ".join(parts) or None


def image_url(result: dict[str, Any]) -> str | None:
    for key in ("image_result", "data"):
        items = result.get(key)
        if isinstance(items, list) and items and isinstance(items[0], dict) and items[0].get("url"):
            return str(items[0]["url"])
    return None


class AsyncImagesClient:
    """The three async-API calls, each turning HTTP and connection failures into ``RemoteError``."""

    def __init__(self, server: str, api_key: str | None, http: httpx.Client) -> None:
        self.server = server
        self._http = http
        # The key goes only to the API routes, never to an image URL that may point elsewhere.
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, f"{self.server}{path}", headers=self._headers, **kwargs)
        except httpx.TransportError as exc:
            raise transport_error(self.server, exc) from exc
        if not response.is_success:
            raise api_error(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RemoteError(f"error: the server at {self.server} sent a non-JSON answer to {path}")
        return body

    def submit(self, request: RemoteRequest) -> str:
        body = self._call("POST", SUBMIT_PATH, json=request.to_json())
        task_id = body.get("id")
        if not task_id:
            raise RemoteError(f"error: the server at {self.server} returned no task id")
        return str(task_id)

    def result(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", RESULT_PATH.format(id=task_id))

    def cancel(self, task_id: str) -> bool:
        """Best effort: whether the server accepted the cancel."""
        try:
            self._call("POST", CANCEL_PATH.format(id=task_id), timeout=5.0)
        except RemoteError:
            return False
        return True

    def download(self, url: str) -> bytes:
        try:
            response = self._http.get(url if "://" in url else f"{self.server}{url}")
        except httpx.TransportError as exc:
            raise transport_error(self.server, exc) from exc
        if not response.is_success:
            raise api_error(response)
        if not response.content.startswith(_PNG_MAGIC):
            raise RemoteError(f"error: {url} is not a PNG")
        return response.content


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _wait(
    client: AsyncImagesClient,
    task_id: str,
    *,
    deadline: float,
    timeout: float,
    poll_interval: float,
    console: Console,
) -> dict[str, Any]:
    """Poll until the task ends; the final result. Raises ``RemoteError`` on FAIL or timeout."""
    transport_failures = 0
    with _progress(console) as progress:
        bar = progress.add_task("submitted", total=100)
        while True:
            try:
                result = client.result(task_id)
                transport_failures = 0
            except RemoteError as exc:
                if not isinstance(exc.__cause__, httpx.TransportError):
                    raise
                transport_failures += 1
                if transport_failures >= MAX_POLL_TRANSPORT_ERRORS:
                    raise
                result = {"task_status": "PROCESSING"}
            status = result.get("task_status")
            if status == "SUCCESS":
                progress.update(bar, description="done", completed=100)
                return result
            if status == "FAIL":
                raise failed_task(task_id, result.get("error"))
            position = result.get("queue_position")
            if isinstance(position, int):
                progress.update(bar, description=f"queued (position {position})", completed=0)
            elif result.get("state") == "queued":  # cogserve's finer state, when no position is known
                progress.update(bar, description="queued", completed=0)
            elif status == "PROCESSING":
                done = result.get("progress")
                progress.update(
                    bar,
                    description="generating",
                    completed=float(done) if isinstance(done, int | float) else None,
                )
            if time.monotonic() + poll_interval > deadline:
                client.cancel(task_id)
                raise RemoteError(
                    f"error: task {task_id} did not finish within {timeout:g} s; it was cancelled"
                )
            time.sleep(poll_interval)


def generate_remote(
    server: str,
    request: RemoteRequest,
    *,
    output: Path | None = None,
    api_key: str | None = None,
    timeout: float = 600.0,
    poll_interval: float = 0.5,
    echo: Callable[[str], None] = print,
    console: Console | None = None,
) -> Path:
    """Generate one image on ``server`` through its async API and save it; the path written.

    Progress goes to ``console`` (stderr by default); ``echo`` gets the result lines, the last of
    which starts with ``wrote <path>``. Raises ``RemoteError`` (``RemoteCancelled`` on Ctrl-C).
    """
    root = normalize_server(server)
    console = console or Console(stderr=True)
    started = time.monotonic()
    deadline = started + timeout
    task_id: str | None = None
    # Every single call is bounded too, so a stuck connection cannot outlive --timeout by much.
    per_call = httpx.Timeout(max(1.0, min(timeout, 60.0)), connect=min(timeout, 10.0))
    with httpx.Client(timeout=per_call, follow_redirects=True) as http:
        client = AsyncImagesClient(root, api_key, http)
        try:
            task_id = client.submit(request)
            result = _wait(
                client,
                task_id,
                deadline=deadline,
                timeout=timeout,
                poll_interval=poll_interval,
                console=console,
            )
            url = image_url(result)
            if url is None:
                raise RemoteError(f"error: task {task_id} succeeded but returned no image URL")
            png = client.download(url)
        except KeyboardInterrupt:
            if task_id is not None:
                client.cancel(task_id)
            raise RemoteCancelled() from None
    target = output or Path(f"cogserve-{request.seed if request.seed is not None else task_id}.png")
    try:
        atomic_write(target, png)
    except OSError as exc:
        raise RemoteError(f"error: could not write the image: {exc}") from exc
    filtered = describe_content_filter(result.get("content_filter"))
    if filtered:
        echo(f"content_filter: {filtered}")
    details = [request.size]
    if request.seed is not None:
        details.append(f"seed {request.seed}")
    details += [f"task {task_id}", f"{time.monotonic() - started:.2f} s"]
    echo(f"wrote {target} ({', '.join(details)})")
    return target
