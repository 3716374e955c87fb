"""Content Credentials against a real ``cogserve serve``: an image fetched over HTTP read by the
c2pa library as any third party would, ``cogserve verify-watermark`` on it, and a server that
refuses to start with an expired certificate."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
from pathlib import Path

import c2pa
import httpx
import pytest

from cogserve.safety.devcert import make_dev_chain
from tests.e2e.conftest import COGSERVE, Server, cli_env
from tests.e2e.test_cli import run
from tests.helpers import IMAGES, change_one_pixel, download_png, make_png

pytestmark = pytest.mark.slow

TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


@pytest.fixture(scope="module")
def served(server: Server) -> tuple[bytes, str]:
    response = httpx.post(
        f"{server.url}{IMAGES}",
        json={"model": "cogview-4", "prompt": "a red circle", "size": "512x512"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    return download_png(url), url.rsplit("/", 1)[1].removesuffix(".png")


def test_a_third_party_c2pa_reader_says_ai_generated(served: tuple[bytes, str]) -> None:
    png, image_id = served
    # The c2pa library used directly, with its defaults: what any C2PA-aware tool sees.
    with c2pa.Reader("image/png", io.BytesIO(png)) as reader:
        store = json.loads(reader.json())
    assert store["validation_state"] == "Valid"  # signature and binding good; dev CA not trusted
    codes = {entry["code"] for entry in store["validation_results"]["activeManifest"]["success"]}
    assert {"claimSignature.validated", "assertion.dataHash.match"} <= codes
    manifest = store["manifests"][store["active_manifest"]]
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))
    created = actions["data"]["actions"][0]
    assert created["action"] == "c2pa.created" and created["digitalSourceType"] == TRAINED
    assert manifest["claim_generator_info"][0]["name"] == "cogserve"
    generation = next(a for a in manifest["assertions"] if a["label"] == "org.cogserve.generation")
    assert generation["data"]["image_id"] == image_id
    assert generation["data"]["model"] == "cogview-4"


def test_verify_watermark_prints_the_claims_and_its_exit_codes(
    served: tuple[bytes, str], server: Server, models_dir: Path, tmp_path: Path
) -> None:
    png, image_id = served
    saved = tmp_path / "served.png"
    saved.write_bytes(png)
    result = run(models_dir, "verify-watermark", str(saved))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"image id {image_id[:8]}" in out  # the invisible watermark
    assert "Content Credentials: valid signature and binding; signer not on a trust list" in out
    assert TRAINED in out and f"image id: {image_id}" in out and "model: cogview-4" in out

    # With the server's own CA as a trust anchor the signer is trusted.
    chain = (server.data_dir / "credentials" / "chain.pem").read_bytes()
    root = tmp_path / "root.pem"
    root.write_bytes(chain[chain.index(b"-----END CERTIFICATE-----") + 26 :])
    trusted = run(models_dir, "verify-watermark", str(saved), "--trust-anchors", str(root))
    assert trusted.returncode == 0 and "valid, signer trusted" in trusted.stdout, trusted.stdout

    tampered = tmp_path / "tampered.png"
    tampered.write_bytes(change_one_pixel(png))
    broken = run(models_dir, "verify-watermark", str(tampered))
    assert broken.returncode == 1, broken.stdout
    assert "INVALID" in broken.stdout and "assertion.dataHash.mismatch" in broken.stdout

    plain = tmp_path / "plain.png"
    plain.write_bytes(make_png(64, 64))
    unmarked = run(models_dir, "verify-watermark", str(plain))
    assert unmarked.returncode == 1 and "Content Credentials: none" in unmarked.stdout

    missing = run(models_dir, "verify-watermark", str(tmp_path / "missing.png"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_a_server_with_an_expired_certificate_refuses_to_start(models_dir: Path, tmp_path: Path) -> None:
    chain, key = make_dev_chain("Old Org", now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1000))
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    result = subprocess.run(
        [COGSERVE, "serve", "--port", "1", "--data-dir", str(tmp_path / "data")],
        env=cli_env(
            models_dir,
            COGSERVE_CREDENTIALS__CERT_CHAIN=str(tmp_path / "chain.pem"),
            COGSERVE_CREDENTIALS__PRIVATE_KEY=str(tmp_path / "key.pem"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "expired on" in result.stderr and "chain.pem" in result.stderr
