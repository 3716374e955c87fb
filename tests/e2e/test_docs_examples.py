"""Docs that run: every shell and Python example in README.md and docs/*.md, against a live server.

Each page gets a fresh ``cogserve serve`` in a fresh folder (its default ``./cogserve-data``), and its
examples run top to bottom in that folder, so what one example does (creating a key turns auth on;
``export COGSERVE_KEY=...``) is what the next one meets, as for a reader following the page. The only
change made to an example is the port: ``127.0.0.1:8000`` becomes the free port the server took.

- ```` ```console ```` blocks: each ``$ command`` (with ``\\`` continuations) must exit 0. Where the
  page shows a JSON answer under it, the real answer must be JSON with at least the keys shown, and an error
  must be the very error shown (code and message).
- ```` ```bash ```` / ```` ```sh ```` blocks run as one ``bash -e`` script; ```` ```python ```` blocks
  run as a script. Exported variables carry from one block to the next.
- A block that cannot run here is marked just above it with ``<!-- docs-test: skip: why -->`` (installs,
  a GPU, another host). ``<!-- docs-test: server -->`` marks the page's ``cogserve serve ...`` line:
  the server starts there, with those flags (and the free port), after the blocks before it ran; a
  page without one gets a plain ``cogserve serve`` before its first block. Other fences (toml, text,
  diagrams) are not code to run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import COGSERVE, cli_env, free_port, stop_server

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
RUNNABLE = {"console", "bash", "sh", "python"}
SKIP = re.compile(r"<!-- docs-test: skip: (.+?) -->")
SERVER = "<!-- docs-test: server -->"
PORT = "127.0.0.1:8000"


@dataclass
class Block:
    page: str
    line: int
    language: str
    text: str
    skip: str | None
    server: bool  # the page's `cogserve serve` line


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        match = re.match(r"^( *)```(\w*)\s*$", lines[index])  # indented: a block inside a list item
        if match is None:
            index += 1
            continue
        start, indent = index, len(match.group(1))
        end = next(i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("```"))
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        skip = SKIP.search(before)
        text = "\n".join(line[indent:] for line in lines[start + 1 : end])
        found.append(
            Block(page.name, start + 1, match.group(2), text, skip and skip.group(1), SERVER in before)
        )
        index = end + 1
    return found


@dataclass
class Command:
    text: str
    shown: str  # what the page shows under it


def console_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("$ "):
            index += 1
            continue
        command = [line[2:]]
        while command[-1].endswith("\\") and index + 1 < len(lines):
            index += 1
            command.append(lines[index])
        index += 1
        shown = []
        while index < len(lines) and not lines[index].startswith("$ "):
            shown.append(lines[index])
            index += 1
        commands.append(Command("\n".join(command), "\n".join(shown).strip()))
    return commands


class Reader:
    """One reader working through one page: a folder, a server, and the shell variables set so far."""

    def __init__(self, folder: Path, models_dir: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        # The variables a reader's shell has: no COGSERVE_ settings of the test run, the venv's
        # commands first on PATH; the tiny model's steps cut so a page runs in seconds.
        self.env = cli_env(models_dir)
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"
        self.env.pop("VIRTUAL_ENV", None)

    def here(self, text: str) -> str:
        return text.replace(PORT, f"127.0.0.1:{self.port}")

    def shell(self, script: str, where: str) -> str:
        """Runs ``script`` in bash with the reader's variables; keeps what it exported."""
        dump = self.folder / ".env-after"
        wrapped = f"set -e\n{self.here(script)}\nenv -0 > {dump}\n"
        done = subprocess.run(
            ["bash", "-c", wrapped],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        entries = dump.read_bytes().split(b"\0")
        self.env = dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)
        return done.stdout

    def python(self, code: str, where: str) -> None:
        done = subprocess.run(
            [sys.executable, "-c", self.here(code)],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"


def check_shown(shown: str, printed: str, where: str) -> None:
    """A JSON answer the page shows must be the real one's shape (every key it shows is in the real
    answer; a page may show a job still running where the real one has finished), and an error shown
    must be the very error the server gave."""
    first = shown.splitlines()[0] if shown else ""
    try:
        expected = json.loads(first)
    except ValueError:
        return  # prose, a progress bar, an elided answer: nothing to compare
    assert printed.strip(), f"{where}: the page shows {first}\nthe command printed nothing"
    actual = json.loads(printed.splitlines()[0])
    if "error" in expected:
        assert actual == expected, f"{where}: the page shows {first}\nthe server said {printed}"
    else:
        assert set(expected) <= set(actual), f"{where}: the page shows {first}\nthe server said {printed}"


def start(folder: Path, models_dir: Path, command: str) -> tuple[subprocess.Popen[bytes], int]:
    """The page's ``cogserve serve ...`` line, run in the reader's folder on a free port."""
    words = shlex.split(command, comments=True)
    assert words[:2] == ["cogserve", "serve"], command
    port = free_port()
    log = folder.parent / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [COGSERVE, "serve", *words[2:], "--port", str(port)],
            cwd=folder,
            env=cli_env(models_dir),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process, port
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise AssertionError(f"not ready:\n{log.read_text()}")


def test_every_page_marks_what_it_does_not_run() -> None:
    """Every runnable block runs or says why not; a skip without a reason is not a reason."""
    runnable = [block for page in PAGES for block in blocks(page) if block.language in RUNNABLE]
    assert len([block for block in runnable if block.skip is None]) >= 20
    for block in runnable:
        assert block.skip is None or len(block.skip) > 8, (block.page, block.line)
    for page in PAGES:
        for block in blocks(page):
            where = f"{page.name}:{block.line}"
            assert block.language or "$ " not in block.text, f"{where}: a command in a fence with no language"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_the_examples_run_as_printed(page: Path, tmp_path: Path, models_dir: Path) -> None:
    todo = [block for block in blocks(page) if block.language in RUNNABLE and block.skip is None]
    if not todo:
        pytest.skip(f"{page.name} has no example to run")
    folder = tmp_path / "reader"
    folder.mkdir()
    servers = [block for block in todo if block.server]
    assert len(servers) <= 1, f"{page.name}: one server per page"
    process, port = (None, free_port()) if servers else start(folder, models_dir, "cogserve serve")
    reader = Reader(folder, models_dir, port)
    try:
        for block in todo:
            where = f"{block.page}:{block.line}"
            if block.server:
                process, reader.port = start(folder, models_dir, block.text)
            elif block.language == "python":
                reader.python(block.text, where)
            elif block.language == "console":
                for command in console_commands(block.text):
                    check_shown(command.shown, reader.shell(command.text, where), where)
            else:
                reader.shell(block.text, where)
    finally:
        if process is not None:
            stop_server(process)
