"""Schema fuzzing: schemathesis against cogserve's own OpenAPI document, on a live ``cogserve serve``.

The run asserts that no request gets a 5xx and that every answer is what the document says: a
documented status, a body valid against its schema, a documented content type and headers, a 405
with ``Allow`` for undocumented methods, schema-invalid requests refused; and (``error_envelope``,
below) that every error is in its route's envelope: OpenAI's under ``/v1``, BigModel's elsewhere.

Not checked: ``positive_data_acceptance`` ("every schema-valid request succeeds"). The document
states the size rules' syntax only (each side 512..2048 and divisible by 16, width*height <= 2^21
is prose: as a regex it would be kilobytes), which webhook hosts, user ids and prompts pass
depends on the operator's settings, and JSON Schema counts 143.0 as an integer where cogserve's
strict validation does not. The document says no more than the server takes (``negative_data_rejection``),
and every valid image body reaches the pipeline in the examples, coverage, fuzzing and stateful
phases alike.

The schemathesis CLI runs as a subprocess and imports this module for its hooks
(``SCHEMATHESIS_HOOKS``): the check and the size cap below.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from cogserve.service.sizes import parse_size
from tests.e2e.conftest import start_server, stop_server

schemathesis = pytest.importorskip("schemathesis")

# A live server and thousands of generated requests: minutes (the keyless pass alone ~30 s).
pytestmark = pytest.mark.slow

SEED = 20251125
MIN_CASES = 2000
# The generator's share is bounded: an image op's fuzzing cases, the stateful scenarios (they submit
# jobs), and the coverage phase's boundary cases (about 110 valid bodies; it takes no maximum). The
# cheap operations (files, jobs, models) make up the count: ~2,500 cases, ~200 images.
CONFIG = """
[generation]
max-examples = 400

[phases.stateful]
generation = { max-examples = 40 }

[[operations]]
include-path-regex = "/images/generations$"
generation = { max-examples = 30 }
"""
TINY = {"COGSERVE_MODEL__STANDARD_STEPS": "1", "COGSERVE_MODEL__HD_STEPS": "1"}
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
ROOT = Path(__file__).resolve().parents[2]

OPENAI_PREFIX = "/v1/"
IMAGE_PATHS = {
    "/api/paas/v4/images/generations",
    "/api/paas/v4/async/images/generations",
    "/v1/images/generations",
}
SMALL_SIZE = "512x512"


# --- hooks: loaded by the schemathesis process ---------------------------------------------------


def _would_generate_at(path: str, size: object) -> bool:
    """Whether ``size`` passes the route's size rules (so the request may reach the pipeline)."""
    if size is None:
        return True  # the default, 1024x1024
    if not isinstance(size, str):
        return False
    if size == "auto":
        return path.startswith(OPENAI_PREFIX)
    try:
        parse_size(size)
    except ValueError:
        return False
    return True


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Generate every valid image at 512x512.

    A size is valid or not before and after (the size rules have their own tests), so no case
    changes sides; what changes is the cost: the tiny pipeline takes ~0.2 s at 512x512 on a CPU and
    ~3 s at 2048x1024, and a few hundred valid bodies reach it in a run.
    """
    body, path = case.body, case.operation.path
    if path in IMAGE_PATHS and isinstance(body, dict) and _would_generate_at(path, body.get("size")):
        case.body = {**body, "size": SMALL_SIZE}


def envelope_problem(path: str, content: bytes) -> str | None:
    """Why an error body is not in the envelope of the API ``path`` belongs to; None if it is."""
    try:
        body = json.loads(content)
    except ValueError:
        return f"a body that is not JSON: {content[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(error, dict):
        return f"not an error envelope: {body!r}"
    if path.startswith(OPENAI_PREFIX):
        ok = (
            set(error) == {"message", "type", "param", "code"}
            and isinstance(error["message"], str)
            and isinstance(error["type"], str)
            and isinstance(error["param"], str | None)
            and isinstance(error["code"], str | None)
        )
        return None if ok else f"not in OpenAI's envelope: {body!r}"
    ok = set(error) == {"code", "message"} and all(isinstance(v, str) for v in error.values())
    return None if ok else f"not in BigModel's envelope: {body!r}"


@schemathesis.check
def error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error (the 405s of undocumented methods included) is in its route's envelope."""
    if response.status_code < 400:
        return None
    path = httpx.URL(response.request.url).path
    problem = envelope_problem(path, response.content)
    if problem is not None:
        raise AssertionError(f"{response.status_code} on {path}: {problem}")
    return None


# --- tests -----------------------------------------------------------------------------------------


def _fuzz_command(url: str, config: Path, report: Path) -> list[str]:
    return [
        SCHEMATHESIS,
        "--config-file",
        str(config),
        "run",
        f"{url}/openapi.json",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        # A slow answer on a busy CI machine is not a wrong one; 60 s still catches a hang.
        "--max-response-time",
        "60",
        "--request-timeout",
        "90",
        # Hypothesis' "data generation is slow" health check, not a property of the server.
        "--suppress-health-check",
        "too_slow",
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]


@pytest.mark.timeout(600)  # ~75 s here; room for a slower CI machine under the subprocess's own limit
def test_schema_fuzz_finds_no_5xx_and_no_undocumented_answer(tmp_path: Path, models_dir: Path) -> None:
    server = start_server(tmp_path / "data", models_dir, env=TINY)
    try:
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.reliability.test_schema_fuzz",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG)
        started = time.monotonic()
        run = subprocess.run(
            _fuzz_command(server.url, config, tmp_path / "junit.xml"),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        elapsed = time.monotonic() - started
    finally:
        stop_server(server.process)
    output = run.stdout + run.stderr
    print(output[-4000:])
    print(f"schemathesis ran {elapsed:.0f} s")
    assert run.returncode == 0, f"schemathesis exited {run.returncode}:\n{output[-20000:]}"
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None, output[-4000:]
    assert int(generated.group(1)) >= MIN_CASES, output[-4000:]
    assert (tmp_path / "junit.xml").exists()
    assert "Traceback" not in server.log.read_text(errors="replace")


# A body every image route accepts, so only the missing key can be what a 401 is about.
IMAGE_BODY = {"model": "cogview-4", "prompt": "a red kite over the sea", "size": SMALL_SIZE}
PATH_VALUES = {"job_id": "job-0123456789abcdef", "model": "cogview-4", "name": "nope.png", "image_id": "nope"}


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def _url(path: str, operation: dict[str, Any]) -> str:
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            value = parameter["schema"].get("enum", [PATH_VALUES[parameter["name"]]])[0]
            path = path.replace("{" + parameter["name"] + "}", value)
    return path


def test_with_auth_on_every_keyed_operation_refuses_a_keyless_call_in_its_envelope(
    tmp_path: Path, models_dir: Path
) -> None:
    """The document's ``security`` says which operations take a key; with --require-auth each of
    them answers 401 in its envelope without one (or with a bad one), and the others stay open."""
    server = start_server(tmp_path / "data", models_dir, "--require-auth", env=TINY)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            document = client.get("/openapi.json").json()
            scheme = next(iter(document["components"]["securitySchemes"]))
            keyed = [op for op in _operations(document) if {scheme: []} in op[2].get("security", [])]
            public = [op for op in _operations(document) if op not in keyed]
            assert {(method, path) for method, path, _ in keyed} >= {
                ("POST", "/api/paas/v4/images/generations"),
                ("POST", "/api/paas/v4/async/images/generations"),
                ("GET", "/api/paas/v4/async-result/{job_id}"),
                ("POST", "/api/paas/v4/async/images/generations/{job_id}/cancel"),
                ("POST", "/v1/images/generations"),
                ("GET", "/v1/models"),
                ("GET", "/v1/models/{model}"),
            }
            failures: list[str] = []
            for method, path, operation in keyed:
                assert "401" in operation["responses"], f"{method} {path} does not document its 401"
                body = IMAGE_BODY if "requestBody" in operation else None
                for authorization in (None, "Bearer nope", "Bearer abc.def", "Basic dXNlcjpwYXNz"):
                    headers = {"Authorization": authorization} if authorization else {}
                    response = client.request(method, _url(path, operation), json=body, headers=headers)
                    where = f"{method} {path} with {authorization or 'no key'}"
                    if response.status_code != 401:
                        failures.append(f"{where}: {response.status_code} {response.text[:200]}")
                    elif (problem := envelope_problem(path, response.content)) is not None:
                        failures.append(f"{where}: {problem}")
                    elif response.headers.get("x-should-retry") != "false":
                        failures.append(
                            f"{where}: x-should-retry is {response.headers.get('x-should-retry')}"
                        )
            for method, path, operation in public:
                response = client.request(method, _url(path, operation))
                if str(response.status_code) not in operation["responses"]:
                    failures.append(f"public {method} {path}: undocumented {response.status_code}")
                elif response.status_code in (401, 403):
                    failures.append(f"public {method} {path}: {response.status_code}")
            # The playground is kept out of the document on purpose (tests/web); it stays open too.
            for path in ("/", "/playground/playground.js"):
                if (status := client.get(path).status_code) != 200:
                    failures.append(f"playground {path}: {status}")
            # Unknown paths and methods: 404 and 405 in the envelope of the API the path is under.
            for method, path, status in [
                ("GET", "/api/paas/v4/nope", 404),
                ("GET", "/v1/nope", 404),
                ("DELETE", "/api/paas/v4/images/generations", 405),
                ("DELETE", "/v1/models", 405),
            ]:
                response = client.request(method, path)
                if response.status_code != status:
                    failures.append(f"{method} {path}: {response.status_code}, not {status}")
                elif (problem := envelope_problem(path, response.content)) is not None:
                    failures.append(f"{method} {path}: {problem}")
            assert not failures, "\n".join(failures)
            assert len(public) >= 5  # health, readiness, metrics, files, the playground's config
    finally:
        stop_server(server.process)
