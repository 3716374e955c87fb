"""The playground page in Debian's Chromium (driven by Playwright) against a real `cogserve serve`.

One server for the module, open (no keys) until the last test makes a key with the CLI: a server
with a key stays in auth mode, so that test comes last. Set COGSERVE_SAVE_SCREENSHOT=1 to refresh
docs/playground.png from the generation test.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from cogserve.engine.builtin import SHAPES_EXAMPLES, SHAPES_NOTE
from cogserve.service.jobs import CANCELLED_MESSAGE
from cogserve.service.sizes import RECOMMENDED_SIZES
from tests.components.chat import ChatServer, Reply, serving_chat
from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.test_cli import run

# Chromium and a live server for the module: ~30 s to start, ~1.5 min in all.
pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# From reference/components.md: no sandbox (containers), no GPU, and no lookups of any host but ours.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
# Read at import: the autouse fixture in tests/conftest.py clears COGSERVE_* before each test.
SAVE_SCREENSHOT = os.environ.get("COGSERVE_SAVE_SCREENSHOT") == "1"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
ASYNC_SUBMIT = "/api/paas/v4/async/images/generations"
TIMEOUT_MS = 30_000
# The server skips its warm-up: readiness comes sooner, and the first image pays for it instead. It
# serves the built-in shapes model (the page explains it); the screenshot run uses its own step count.
FAST_START = {
    "COGSERVE_MODEL__WARMUP": "false",
    "COGSERVE_MODEL__BUILTIN": "shapes",
    **({"COGSERVE_MODEL__STANDARD_STEPS": "10"} if SAVE_SCREENSHOT else {}),
}


CAPTION = "A large red circle in the center of the picture on a flat blue background, minimalist."


@pytest.fixture(scope="module")
def enhancer() -> Iterator[ChatServer]:
    """The server's prompt enhancer: a chat-completions server on loopback answering CAPTION."""
    with serving_chat() as chat:
        chat.answer(Reply(CAPTION))
        yield chat


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, enhancer: ChatServer
) -> Iterator[Server]:
    # Mode "never": only the page's Enhance button rewrites, so the other tests' prompts stay theirs.
    env = {**FAST_START, "COGSERVE_ENHANCER__URL": enhancer.base_url, "COGSERVE_ENHANCER__MODE": "never"}
    running = start_server(tmp_path_factory.mktemp("playground") / "data", models_dir, env=env)
    yield running
    stop_server(running.process)


@pytest.fixture(scope="module")
def key(server: Server, models_dir: Path) -> str:
    """A key made with the CLI. From then on the server wants one: the test that asks runs last."""
    created = run(models_dir, "keys", "create", "--name", "playground", "--data-dir", str(server.data_dir))
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    """A fresh tab (own sessionStorage) that fails the test on any uncaught script error."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    tab = context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    # Keep every text the progress label shows: a fast job can come and go between two looks.
    tab.add_init_script(
        """
        window.__progressLabels = [];
        document.addEventListener("DOMContentLoaded", () => {
          const label = document.getElementById("progress-label");
          new MutationObserver(() => window.__progressLabels.push(label.textContent))
            .observe(label, {childList: true, characterData: true, subtree: true});
        });
        """
    )
    yield tab
    tab.screenshot(path=str(tmp_path / "playground.png"), full_page=True)  # the test's artifact
    context.close()
    assert script_errors == []


def _open(tab: Any, server: Server) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{server.url}/")
    expect(tab.get_by_test_id("server-status")).to_have_attribute("data-state", "ready")


def _custom_size(tab: Any, width: str, height: str) -> None:
    tab.get_by_test_id("size").select_option("custom")
    tab.get_by_test_id("width").fill(width)
    tab.get_by_test_id("height").fill(height)


def _generate(tab: Any, prompt: str, width: int, height: int, seed: str = "") -> None:
    """Fill the form, submit, and wait for the image (or fail on the alert's text)."""
    from playwright.sync_api import expect

    before = tab.get_by_test_id("history-item").count()
    tab.get_by_test_id("prompt").fill(prompt)
    _custom_size(tab, str(width), str(height))
    tab.get_by_test_id("seed").fill(seed)
    tab.get_by_test_id("submit").click()
    tab.get_by_test_id("progress").wait_for(state="visible", timeout=TIMEOUT_MS)
    tab.wait_for_function(
        """before => document.querySelectorAll("[data-testid=history-item]").length > before
                    || !document.getElementById("alert").hidden""",
        arg=before,
        timeout=TIMEOUT_MS,
    )
    alert = tab.get_by_test_id("error")
    assert alert.is_hidden(), alert.inner_text()
    expect(tab.get_by_test_id("history-item")).to_have_count(before + 1)


def _async_error(server: Server, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """The error the async API gives for this body: at submission, or when its job fails."""
    submitted = httpx.post(f"{server.url}{ASYNC_SUBMIT}", json=body, headers=headers, timeout=30)
    if submitted.status_code != 200:
        return submitted.json()["error"]
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result = httpx.get(f"{server.url}/api/paas/v4/async-result/{job_id}", headers=headers).json()
        if result["task_status"] != "PROCESSING":
            assert result["task_status"] == "FAIL", result
            return result["error"]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running")


def test_static_files_and_config(server: Server) -> None:
    url = server.url
    config = httpx.get(f"{url}/playground/config.json").json()
    assert config == {
        "auth_required": False,
        "models": ["cogview-4", "cogview-4-250304"],
        "recommended_sizes": list(RECOMMENDED_SIZES),
        "default_size": "1024x1024",
        "max_prompt_chars": 4000,
        "sizes": {"min": 512, "max": 2048, "multiple": 16, "max_pixels": 2**21},
        "model_note": SHAPES_NOTE,
        "example_prompts": list(SHAPES_EXAMPLES),
        "enhancer": True,
    }
    for path, content_type in [
        ("/", "text/html"),
        ("/playground/playground.js", "text/javascript"),
        ("/playground/playground.css", "text/css"),
        ("/playground/index.html", "text/html"),
    ]:
        response = httpx.get(f"{url}{path}")
        assert response.status_code == 200
        assert response.headers["content-type"] == f"{content_type}; charset=utf-8"
    assert "script-src 'self'" in httpx.get(f"{url}/").headers["content-security-policy"]
    for name in ["app.py", "..%2Fapi%2Fweb.py", "%2E%2E%2F__init__.py", "web", "config"]:
        response = httpx.get(f"{url}/playground/{name}")
        assert response.status_code == 404, name
        assert response.json()["error"]["code"] == "1222"
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert "/playground/config.json" in paths
    assert "/" not in paths and "/playground/{name}" not in paths


def test_page_shows_the_config_and_checks_the_size_rules(page: Any, server: Server) -> None:
    from playwright.sync_api import expect

    _open(page, server)
    expect(page.get_by_test_id("server-status")).to_have_text("open mode · no key needed")
    expect(page.get_by_test_id("auth-field")).to_be_hidden()
    for field in ["prompt", "model", "quality", "size", "seed", "width", "height", "api-key"]:
        expect(page.locator(f"label[for={field}]")).to_have_count(1)  # every input has its label
    models = page.get_by_test_id("model").locator("option")
    expect(models).to_have_text(["cogview-4", "cogview-4-250304"])
    sizes = page.get_by_test_id("size").locator("option")
    expect(sizes).to_have_count(8)
    expect(page.get_by_test_id("size")).to_have_value("1024x1024")
    expect(page.get_by_test_id("prompt-count")).to_have_text("0 / 4,000")
    expect(page.get_by_test_id("submit")).to_be_disabled()  # no prompt yet

    page.get_by_test_id("prompt").fill("一只可爱的小猫咪 🐱")  # code points, as the server counts them
    expect(page.get_by_test_id("prompt-count")).to_have_text("10 / 4,000")
    expect(page.get_by_test_id("submit")).to_be_enabled()

    size_error = page.get_by_test_id("size-error")
    for width, height, message in [
        ("500", "512", "between 512 and 2048 px; the width is 500"),
        ("512", "2064", "between 512 and 2048 px; the height is 2064"),
        ("520", "512", "divisible by 16; the width is 520"),
        ("2048", "2048", "at most 2,097,152 px (2^21)"),
        ("", "512", "whole number"),
    ]:
        _custom_size(page, width, height)
        expect(size_error).to_be_visible()
        expect(size_error).to_contain_text(message)
        expect(page.get_by_test_id("submit")).to_be_disabled()
    _custom_size(page, "2048", "1024")  # exactly 2^21 px
    expect(size_error).to_be_hidden()
    expect(page.get_by_test_id("submit")).to_be_enabled()

    page.get_by_test_id("seed").fill("-1")
    expect(page.get_by_test_id("seed-error")).to_be_visible()
    expect(page.get_by_test_id("submit")).to_be_disabled()
    page.get_by_test_id("seed").fill("9223372036854775807")
    expect(page.get_by_test_id("seed-error")).to_be_hidden()
    page.get_by_test_id("prompt").fill("x" * 4001)
    expect(page.get_by_test_id("prompt-count")).to_have_text("4,001 / 4,000")
    expect(page.get_by_test_id("submit")).to_be_disabled()


def test_the_built_in_model_is_explained_and_its_examples_fill_the_prompt(page: Any, server: Server) -> None:
    from playwright.sync_api import expect

    _open(page, server)
    note = page.get_by_test_id("model-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("built-in shapes model")
    examples = page.get_by_test_id("example-prompts").locator("button")
    expect(examples).to_have_count(len(SHAPES_EXAMPLES))
    examples.nth(1).click()
    expect(page.get_by_test_id("prompt")).to_have_value(SHAPES_EXAMPLES[1])
    expect(page.get_by_test_id("submit")).to_be_enabled()


def test_the_enhanced_prompt_is_reviewed_and_edited_before_generating(
    page: Any, server: Server, enhancer: ChatServer
) -> None:
    from playwright.sync_api import expect

    _open(page, server)
    prompt = page.get_by_test_id("prompt")
    prompt.fill("a red circle")
    page.get_by_test_id("enhance").click()
    expect(prompt).to_have_value(CAPTION)
    expect(page.get_by_test_id("enhance-note")).to_contain_text("review or edit it")
    assert enhancer.requests[-1].body["messages"][-1]["content"] == "a red circle"
    page.get_by_test_id("enhance-undo").click()  # back to the prompt as typed, and forward again
    expect(prompt).to_have_value("a red circle")
    page.get_by_test_id("enhance").click()
    expect(prompt).to_have_value(CAPTION)

    # The edited rewrite is what the image is made from, and it is not enhanced a second time.
    asked = len(enhancer.requests)
    edited = CAPTION + " Crisp edges."
    _generate(page, edited, 512, 512, seed="5")
    expect(page.get_by_test_id("result-caption")).to_contain_text("Crisp edges.")
    assert len(enhancer.requests) == asked

    # An enhancer answer that is no prompt leaves the prompt as it was and says why.
    enhancer.answer(Reply('{"prompt": "a circle"}'))
    try:
        prompt.fill("a blue square")
        page.get_by_test_id("enhance").click()
        expect(page.get_by_test_id("error")).to_contain_text("could not rewrite this prompt (not_a_prompt)")
        expect(prompt).to_have_value("a blue square")
    finally:
        enhancer.answer(Reply(CAPTION))


def test_generates_with_live_progress_and_keeps_a_history(page: Any, server: Server) -> None:
    from playwright.sync_api import expect

    _open(page, server)
    _generate(page, "a red fox in the snow, watercolour", 512, 512, seed="42")

    labels = page.evaluate("window.__progressLabels")
    assert any(label.startswith(("Generating… ", "Queued, position ")) for label in labels), labels
    image = page.get_by_test_id("result-image")
    expect(image).to_be_visible()
    assert image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]") == [True, 512, 512]
    assert image.get_attribute("src").startswith(f"{server.url}/files/")
    expect(page.get_by_test_id("result-caption")).to_contain_text("a red fox in the snow, watercolour")
    expect(page.get_by_test_id("result-caption")).to_contain_text("512×512 · standard · seed 42 · cogview-4")
    expect(page.get_by_test_id("progress")).to_be_hidden()

    # The history lives in sessionStorage: it survives a reload of the tab, and a thumbnail reopens.
    page.reload()
    expect(page.get_by_test_id("history-item")).to_have_count(1)
    expect(page.get_by_test_id("result")).to_be_hidden()
    page.get_by_test_id("history-item").click()
    expect(image).to_be_visible()
    expect(page.get_by_test_id("result-caption")).to_contain_text("seed 42")
    expect(page.get_by_test_id("history-item")).to_have_attribute("aria-pressed", "true")

    if SAVE_SCREENSHOT:
        # Latin prompts only: this machine's Chromium has no CJK font to show them with.
        _generate(
            page, "a large yellow star in the top-left corner on a black background", 512, 768, seed="7"
        )
        _generate(page, "a green triangle at the bottom right, pink background", 768, 512, seed="2024")
        page.get_by_test_id("size").select_option("1024x1024")
        shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        # 256 colours keep the docs' image near 400 kB instead of 1 MB; the page looks the same.
        palette = shot.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        palette.save(DOCS_SCREENSHOT, optimize=True)


def test_each_image_shows_its_content_credentials(page: Any, server: Server) -> None:
    from playwright.sync_api import expect

    _open(page, server)
    _generate(page, "a blue square on a white background", 512, 512)
    badge = page.get_by_test_id("credentials")
    expect(badge).to_be_visible()
    expect(badge).to_have_attribute("data-state", "valid")  # the development chain: not trusted
    summary = page.get_by_test_id("credentials-summary")
    expect(summary).to_have_text("Content Credentials · AI-generated · signer not on a trust list")
    summary.click()  # the claims fold out
    claims = page.get_by_test_id("credentials-claims")
    expect(claims).to_be_visible()
    src = page.get_by_test_id("result-image").get_attribute("src")
    image_id = src.rsplit("/", 1)[1].removesuffix(".png")
    expect(claims.locator("[data-claim=image_id]")).to_have_text(image_id)
    expect(claims.locator("[data-claim=digital_source_type]")).to_have_text("trainedAlgorithmicMedia")
    expect(claims.locator("[data-claim=model]")).to_have_text("cogview-4")
    expect(claims.locator("[data-claim=generator]")).to_contain_text("cogserve")
    expect(claims.locator("[data-claim=prompt]")).to_have_count(0)  # off unless the operator opts in


def test_a_queued_job_shows_its_place_and_can_be_cancelled(page: Any, server: Server) -> None:
    from playwright.sync_api import expect

    if httpx.get(f"{server.url}/readyz").json()["device"] != "cpu":
        pytest.skip("on a GPU the tiny model finishes before a click could cancel it")
    # Big hd jobs hold the only CPU slot, so the page's job waits behind them. Several: the shapes
    # model draws at its native size whatever the size asked, so one such job can be done in about a
    # second, before the page has even submitted.
    body = {"model": "cogview-4", "prompt": "a slow one", "size": "2048x1024", "quality": "hd"}
    blockers = [
        httpx.post(f"{server.url}{ASYNC_SUBMIT}", json=body, timeout=30).json()["id"] for _ in range(6)
    ]
    try:
        _open(page, server)
        page.get_by_test_id("prompt").fill("a queued one")
        _custom_size(page, "512", "512")
        page.get_by_test_id("submit").click()
        expect(page.get_by_test_id("progress-label")).to_have_text(re.compile(r"^Queued, position [1-6]$"))
        page.get_by_test_id("cancel").click()
        alert = page.get_by_test_id("error")
        expect(alert).to_contain_text(f"Error 499 {CANCELLED_MESSAGE}")
        expect(page.get_by_test_id("progress")).to_be_hidden()
        expect(page.get_by_test_id("cancel")).to_be_hidden()
        expect(page.get_by_test_id("submit")).to_be_enabled()
        expect(page.get_by_test_id("history-item")).to_have_count(0)
    finally:
        for blocker in blockers:
            httpx.post(f"{server.url}{ASYNC_SUBMIT}/{blocker}/cancel", timeout=30)


def test_a_blocked_prompt_shows_the_api_error(page: Any, server: Server) -> None:
    from playwright.sync_api import expect

    prompt = "a medieval torture chamber"
    body = {"model": "cogview-4", "prompt": prompt, "size": "512x512"}
    error = _async_error(server, body)
    assert error["code"] == "1301"

    _open(page, server)
    page.get_by_test_id("prompt").fill(prompt)
    _custom_size(page, "512", "512")
    page.get_by_test_id("submit").click()
    alert = page.get_by_test_id("error")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("Error 1301")
    expect(alert).to_contain_text(error["message"])
    expect(page.get_by_test_id("history-item")).to_have_count(0)
    expect(page.get_by_test_id("submit")).to_be_enabled()  # ready for a better prompt


def test_a_key_is_asked_for_and_a_wrong_one_shows_the_401(page: Any, server: Server, key: str) -> None:
    from playwright.sync_api import expect

    assert httpx.get(f"{server.url}/playground/config.json").json()["auth_required"] is True
    key_id, secret = key.split(".")
    wrong = f"{key_id}.{'x' * len(secret)}"
    body = {"model": "cogview-4", "prompt": "a paper boat", "size": "512x512"}
    refused = httpx.post(
        f"{server.url}{ASYNC_SUBMIT}", json=body, headers={"Authorization": f"Bearer {wrong}"}
    )
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["code"] == "1000"

    _open(page, server)
    expect(page.get_by_test_id("server-status")).to_have_text("API key required")
    expect(page.get_by_test_id("auth-field")).to_be_visible()
    page.get_by_test_id("api-key").fill(wrong)
    page.get_by_test_id("prompt").fill("a paper boat")
    _custom_size(page, "512", "512")
    page.get_by_test_id("submit").click()
    alert = page.get_by_test_id("error")
    expect(alert).to_contain_text(f"Error {error['code']}")
    expect(alert).to_contain_text(error["message"])

    # The right key, kept for this tab only, gets the image.
    page.get_by_test_id("api-key").fill(key)
    page.reload()
    expect(page.get_by_test_id("api-key")).to_have_value(key)
    _generate(page, "a paper boat", 512, 512)
    expect(page.get_by_test_id("result-image")).to_be_visible()
