"""Content Credentials on their own: the development chain, signing, c2pa's own reading of the result,
and the certificate problems that must stop a server at start."""

from __future__ import annotations

import datetime as dt
import logging
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cogserve.errors import CogserveError, ConfigError
from cogserve.safety.credentials import (
    TRAINED_ALGORITHMIC_MEDIA,
    CredentialSigner,
    describe_credentials,
    read_credentials,
)
from cogserve.safety.devcert import CHAIN_FILE, KEY_FILE, ensure_dev_chain, make_dev_chain
from cogserve.safety.watermark import Watermarker, encode_png
from cogserve.settings import Settings
from tests.helpers import change_one_pixel, make_png, open_png

ID = "AbCdEfGh" + "x" * 24


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> CredentialSigner:
    return CredentialSigner.development_chain(tmp_path_factory.mktemp("data") / "credentials")


def _root(signer: CredentialSigner) -> bytes:
    leaf_end = signer.chain_pem.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
    return signer.chain_pem[leaf_end:]


def test_the_development_chain_is_made_once_with_a_private_key_and_a_loud_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "credentials"
    with caplog.at_level(logging.WARNING):
        CredentialSigner.development_chain(directory)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DEVELOPMENT certificate" in message for message in warnings), warnings
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    first = (directory / CHAIN_FILE).read_bytes(), (directory / KEY_FILE).read_bytes()
    # A second start uses the same chain (images signed before stay attributable to it).
    _, _, made = ensure_dev_chain(directory)
    assert not made
    assert ((directory / CHAIN_FILE).read_bytes(), (directory / KEY_FILE).read_bytes()) == first
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_signed_png_reads_valid_untrusted_and_ai_generated(signer: CredentialSigner) -> None:
    signed = signer.sign(make_png(64, 48), ID, "cogview-4-250304")
    found = read_credentials(signed)
    assert found is not None
    # Signature and hard binding check out; only the trust list is missing (a development CA).
    assert found.state == "Valid" and found.valid and not found.trusted
    assert found.signature_valid and found.binding_valid
    assert found.failures == ["signingCredential.untrusted"]
    assert found.ai_generated
    claims = found.claims
    assert claims["action"] == "c2pa.created"
    assert claims["digital_source_type"] == TRAINED_ALGORITHMIC_MEDIA
    assert claims["generator"].startswith("cogserve ")
    assert (claims["model"], claims["image_id"]) == ("cogview-4-250304", ID)
    assert "prompt" not in claims and "user_id" not in claims
    assert open_png(signed).size == (64, 48)


def test_with_its_root_as_a_trust_anchor_it_reads_trusted(signer: CredentialSigner) -> None:
    found = read_credentials(signer.sign(make_png(32, 32), ID, "m"), trust_anchors=_root(signer))
    assert found is not None and found.state == "Trusted" and found.failures == []
    assert "valid, signer trusted" in describe_credentials(found)


def test_prompt_and_user_id_go_in_only_when_given(signer: CredentialSigner) -> None:
    found = read_credentials(signer.sign(make_png(32, 32), ID, "m", prompt="一只猫", user_id="u-1"))
    assert found is not None
    assert (found.claims["prompt"], found.claims["user_id"]) == ("一只猫", "u-1")


def test_one_changed_pixel_breaks_the_hard_binding(signer: CredentialSigner) -> None:
    marked = Watermarker().apply(open_png(make_png(128, 128)), ID)
    signed = signer.sign(encode_png(marked, {"Software": "cogserve"}), ID, "m")
    tampered = change_one_pixel(signed)
    assert tampered != signed and open_png(tampered).size == (128, 128)
    found = read_credentials(tampered)
    assert found is not None
    assert found.state == "Invalid" and not found.valid and not found.binding_valid
    assert "assertion.dataHash.mismatch" in found.failures
    assert found.signature_valid  # the manifest itself is intact: the pixels changed
    assert "INVALID" in describe_credentials(found)


def test_an_image_without_a_manifest_reads_none() -> None:
    assert read_credentials(make_png(16, 16)) is None
    assert "none" in describe_credentials(None)


def _write_chain(directory: Path, chain: bytes, key: bytes) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "chain.pem").write_bytes(chain)
    (directory / "key.pem").write_bytes(key)
    return directory / "chain.pem", directory / "key.pem"


def test_the_operators_own_chain_signs(tmp_path: Path) -> None:
    chain, key = _write_chain(tmp_path, *make_dev_chain("Example Org"))
    found = read_credentials(CredentialSigner.from_files(chain, key).sign(make_png(16, 16), ID, "m"))
    assert found is not None and found.valid
    assert found.claims["issuer"] == "Example Org"


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    chain, key = _write_chain(tmp_path, *make_dev_chain())
    key.unlink()
    with pytest.raises(ConfigError, match=r"private key not found: .*key\.pem"):
        CredentialSigner.from_files(chain, key)


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    chain, _ = make_dev_chain()
    _, other_key = make_dev_chain()
    chain_path, key_path = _write_chain(tmp_path, chain, other_key)
    with pytest.raises(ConfigError, match="does not belong to the chain's first certificate"):
        CredentialSigner.from_files(chain_path, key_path)


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=1000)
    chain, key = _write_chain(tmp_path, *make_dev_chain(now=long_ago))
    with pytest.raises(ConfigError, match="expired on"):
        CredentialSigner.from_files(chain, key)


def test_a_chain_c2pa_refuses_is_refused_at_start(tmp_path: Path) -> None:
    # A lone self-signed certificate: key and certificate match, but c2pa will not sign with it.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lone signer")])
    now = dt.datetime.now(dt.UTC)
    lone = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain_path, key_path = _write_chain(tmp_path, lone.public_bytes(serialization.Encoding.PEM), key_pem)
    with pytest.raises(ConfigError, match="c2pa refuses to sign with it"):
        CredentialSigner.from_files(chain_path, key_path)


def test_settings_want_both_files_or_neither(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="set both cert_chain and private_key"):
        Settings(credentials={"cert_chain": tmp_path / "chain.pem"})
    with pytest.raises(ValueError, match="timestamp_url must start with http"):
        Settings(credentials={"timestamp_url": "timestamp.example"})


def test_a_timestamp_authority_is_asked_on_each_signing_and_its_failure_is_an_error(tmp_path: Path) -> None:
    # Start-up does not contact it (the signer is built); the first image does, and fails loudly
    # instead of going out without the timestamp the operator asked for.
    signer = CredentialSigner.development_chain(tmp_path / "credentials", timestamp_url="http://127.0.0.1:1/")
    with pytest.raises(CogserveError, match=r"could not sign .*127\.0\.0\.1:1"):
        signer.sign(make_png(16, 16), ID, "m")


def test_worker_threads_sign_at_the_same_time(signer: CredentialSigner) -> None:
    def sign(i: int) -> str:
        found = read_credentials(signer.sign(make_png(64, 64), f"{ID[:-2]}{i:02d}", "m"))
        assert found is not None and found.valid
        return str(found.claims["image_id"])

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(sign, range(24)))
    assert ids == [f"{ID[:-2]}{i:02d}" for i in range(24)]
