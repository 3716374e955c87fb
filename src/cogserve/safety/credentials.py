"""Content Credentials: a C2PA manifest, signed with the operator's certificate, in each PNG.

The manifest says the image was made by a trained model (``c2pa.actions`` with ``c2pa.created`` and
IPTC's ``trainedAlgorithmicMedia``), by which program and version (``claim_generator_info``), with
which model, and under which image id (``org.cogserve.generation``). The prompt and the user id go
in only when the operator turns them on. Its hard binding (a hash of every byte outside the
manifest) means that signing must be the last thing done to the bytes: any later change, even one
pixel, makes readers report the manifest invalid.

c2pa-python's objects wrap native handles; each signing builds its own, so worker threads never
share one.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cogserve import __version__
from cogserve.errors import CogserveError, ConfigError
from cogserve.safety.devcert import ensure_dev_chain

log = logging.getLogger(__name__)

GENERATOR = "cogserve"
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
#: cogserve's own assertion: what made the image, under which id.
GENERATION_LABEL = "org.cogserve.generation"
PNG = "image/png"
DEV_WARNING = (
    "Content Credentials are signed with a self-signed DEVELOPMENT certificate (%s): readers will "
    "call them untrusted. For production set credentials.cert_chain and credentials.private_key "
    "(COGSERVE_CREDENTIALS__CERT_CHAIN, COGSERVE_CREDENTIALS__PRIVATE_KEY)."
)
#: A 1x1 PNG, signed once at start so a certificate c2pa refuses fails there, not on each image.
_PROBE_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ff"
    "ff3f0005fe02fedccc59e70000000049454e44ae426082"
)


class CredentialSigner:
    """Signs manifests into PNG bytes with one certificate chain and key; built once, at start-up.

    Raises ``ConfigError`` when a file is missing or unreadable, the key does not belong to the
    chain's first certificate, that certificate is not valid now, or c2pa refuses the chain.
    """

    def __init__(
        self,
        chain_pem: bytes,
        key_pem: bytes,
        *,
        timestamp_url: str | None = None,
        server_name: str = GENERATOR,
        where: str = "the certificate",
        development: bool = False,
    ) -> None:
        self.development = development
        self.server_name = server_name
        self._chain = chain_pem
        self._key = key_pem
        self._timestamp_url = timestamp_url
        self.certificate = _check_pair(chain_pem, key_pem, where)
        self.algorithm = _algorithm(serialization.load_pem_private_key(key_pem, None), where)
        try:
            self._sign_png(_PROBE_PNG, _manifest("probe", "probe", {}), with_timestamp=False)
        except Exception as exc:  # c2pa.C2paError: its own checks of the chain (CA flags, usages, ...)
            raise ConfigError(f"{where}: c2pa refuses to sign with it: {exc}") from exc

    @classmethod
    def from_files(
        cls,
        chain_path: Path,
        key_path: Path,
        *,
        timestamp_url: str | None = None,
        server_name: str = GENERATOR,
        development: bool = False,
    ) -> CredentialSigner:
        chain, key = _read(chain_path, "certificate chain"), _read(key_path, "private key")
        return cls(
            chain,
            key,
            timestamp_url=timestamp_url,
            server_name=server_name,
            where=f"Content Credentials certificate {chain_path} with key {key_path}",
            development=development,
        )

    @classmethod
    def development_chain(
        cls, directory: Path, *, timestamp_url: str | None = None, server_name: str = GENERATOR
    ) -> CredentialSigner:
        """Sign with the development chain in ``directory``, made there (with a WARNING) if absent."""
        try:
            chain, key, made = ensure_dev_chain(directory)
        except OSError as exc:
            raise ConfigError(f"cannot create the development certificate in {directory}: {exc}") from exc
        if made:
            log.warning("made a self-signed development certificate chain in %s", directory)
        log.warning(DEV_WARNING, chain)
        return cls.from_files(
            chain, key, timestamp_url=timestamp_url, server_name=server_name, development=True
        )

    @property
    def chain_pem(self) -> bytes:
        return self._chain

    def sign(
        self,
        png: bytes,
        image_id: str,
        model: str,
        *,
        prompt: str | None = None,
        user_id: str | None = None,
    ) -> bytes:
        """``png`` with a signed manifest embedded. ``prompt`` and ``user_id`` go in when given."""
        generation: dict[str, Any] = {"server": self.server_name}
        if prompt is not None:
            generation["prompt"] = prompt
        if user_id is not None:
            generation["user_id"] = user_id
        manifest = _manifest(image_id, model, generation)
        try:
            return self._sign_png(png, manifest, with_timestamp=True)
        except Exception as exc:  # c2pa.C2paError, e.g. the timestamp authority did not answer
            raise CogserveError(f"could not sign the image's Content Credentials: {exc}") from exc

    def _sign_png(self, png: bytes, manifest: Mapping[str, Any], *, with_timestamp: bool) -> bytes:
        import c2pa

        timestamp = self._timestamp_url if with_timestamp else None
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(self.algorithm, self._chain, self._key, timestamp))
        # No thumbnail: it would be a JPEG copy of the image, 100+ KB each, for no reader's need here.
        context = c2pa.Context(c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))
        out = io.BytesIO()
        with signer, context, c2pa.Builder(dict(manifest), context) as builder:
            builder.sign(signer, PNG, io.BytesIO(png), out)
        return out.getvalue()


def signer_from_settings(
    enabled: bool,
    cert_chain: Path | None,
    private_key: Path | None,
    timestamp_url: str | None,
    dev_dir: Path,
    server_name: str = GENERATOR,
) -> CredentialSigner | None:
    """The signer the settings ask for: none when off; the operator's chain; else a development one."""
    if not enabled:
        return None
    if cert_chain is not None and private_key is not None:
        signer = CredentialSigner.from_files(
            cert_chain, private_key, timestamp_url=timestamp_url, server_name=server_name
        )
    else:
        signer = CredentialSigner.development_chain(
            dev_dir, timestamp_url=timestamp_url, server_name=server_name
        )
    cert = signer.certificate
    log.info(
        "Content Credentials: signing as %s, certificate valid until %s UTC%s",
        cert.subject.rfc4514_string(),
        f"{cert.not_valid_after_utc:%Y-%m-%d}",
        f", timestamps from {timestamp_url}" if timestamp_url else "",
    )
    return signer


@dataclass(frozen=True)
class Credentials:
    """What a C2PA reader found in an image, and what its validation said."""

    #: c2pa's overall verdict: "Trusted" (valid and the signer chains to a trust anchor), "Valid"
    #: (signature and hard binding check out; the signer is on no trust list) or "Invalid".
    state: str
    #: Every failure code c2pa reported, e.g. ``assertion.dataHash.mismatch`` for altered pixels.
    failures: list[str]
    signature_valid: bool
    binding_valid: bool
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.state in ("Valid", "Trusted")

    @property
    def trusted(self) -> bool:
        return self.state == "Trusted"

    @property
    def ai_generated(self) -> bool:
        return self.claims.get("digital_source_type") == TRAINED_ALGORITHMIC_MEDIA

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "valid": self.valid,
            "trusted": self.trusted,
            "signature_valid": self.signature_valid,
            "binding_valid": self.binding_valid,
            "ai_generated": self.ai_generated,
            "failures": self.failures,
            "claims": self.claims,
        }


def read_credentials(data: bytes, trust_anchors: bytes | None = None) -> Credentials | None:
    """The image's Content Credentials, validated by c2pa; None when it carries none.

    ``trust_anchors``: PEM of CA certificates to trust (e.g. the operator's root), so an image they
    issued reads "Trusted"; without them c2pa's default (empty) trust list applies.
    """
    import c2pa

    stream = io.BytesIO(data)
    config: dict[str, Any] = {}
    if trust_anchors:
        config["trust"] = {"trust_anchors": trust_anchors.decode("ascii")}
    try:
        with c2pa.Context(c2pa.Settings.from_dict(config)) as context:
            reader = c2pa.Reader(None, stream, None, context)
            with reader:
                store = json.loads(reader.json())
    except (c2pa.C2paError.ManifestNotFound, c2pa.C2paError.NotSupported):
        return None
    except c2pa.C2paError as exc:  # a manifest is there but cannot be read: as good as forged
        return Credentials(state="Invalid", failures=[str(exc)], signature_valid=False, binding_valid=False)
    return _credentials(store)


def _credentials(store: dict[str, Any]) -> Credentials:
    active = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    success = {entry.get("code") for entry in results.get("success", [])}
    failures = [str(entry.get("code")) for entry in results.get("failure", [])]
    signature = "claimSignature.validated" in success and not any(
        code.startswith("claimSignature.") for code in failures
    )
    binding = any(code.endswith(".match") and "Hash" in code for code in success) and not any(
        "Hash" in code for code in failures
    )
    return Credentials(
        state=str(store.get("validation_state") or "Invalid"),
        failures=failures,
        signature_valid=signature,
        binding_valid=binding,
        claims=_claims(active),
    )


def _claims(manifest: dict[str, Any]) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    generators = manifest.get("claim_generator_info") or []
    if generators:
        first = generators[0]
        claims["generator"] = " ".join(str(first[k]) for k in ("name", "version") if first.get(k))
    for assertion in manifest.get("assertions") or []:
        label, data = assertion.get("label", ""), assertion.get("data") or {}
        if label.startswith("c2pa.actions"):
            for action in data.get("actions") or []:
                if action.get("action") == "c2pa.created":
                    claims["action"] = "c2pa.created"
                    claims["digital_source_type"] = action.get("digitalSourceType")
        elif label == GENERATION_LABEL:
            for key in ("model", "image_id", "server", "prompt", "user_id"):
                if key in data:
                    claims[key] = data[key]
    signature = manifest.get("signature_info") or {}
    claims["signed_by"] = signature.get("common_name")
    claims["issuer"] = signature.get("issuer")
    if signature.get("time"):
        claims["signed_at"] = signature["time"]
    return claims


def describe_credentials(found: Credentials | None) -> str:
    """Lines on an image's Content Credentials, for ``cogserve verify-watermark``."""
    if found is None:
        return "Content Credentials: none (never signed, or stripped by a re-encode or an editor)"
    if not found.valid:
        verdict = "INVALID (the image or its manifest was altered after signing)"
    elif found.trusted:
        verdict = "valid, signer trusted"
    else:
        verdict = "valid signature and binding; signer not on a trust list (e.g. a development certificate)"
    lines = [f"Content Credentials: {verdict}"]
    if found.failures:
        lines.append(f"  c2pa failures: {', '.join(found.failures)}")
    names = {
        "digital_source_type": "source",
        "generator": "generator",
        "model": "model",
        "image_id": "image id",
        "server": "server",
        "prompt": "prompt",
        "user_id": "user_id",
        "signed_by": "signed by",
        "issuer": "issuer",
        "signed_at": "timestamp",
    }
    for key, name in names.items():
        if found.claims.get(key):
            lines.append(f"  {name}: {found.claims[key]}")
    return "\n".join(lines)


def _manifest(image_id: str, model: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    created = {
        "action": "c2pa.created",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": _generator(),
        "parameters": {"model": model},
    }
    return {
        "claim_generator_info": [_generator()],
        "title": f"{image_id}.png",
        "format": PNG,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [created]}},
            {"label": GENERATION_LABEL, "data": {"image_id": image_id, "model": model, **extra}},
        ],
    }


def _generator() -> dict[str, str]:
    return {"name": GENERATOR, "version": __version__}


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"Content Credentials {what} not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the Content Credentials {what} {path}: {exc}") from exc


def _check_pair(chain_pem: bytes, key_pem: bytes, where: str) -> x509.Certificate:
    """The chain's first certificate, once the key is its key and it is valid now."""
    try:
        certificates = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a PEM certificate chain: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as exc:
        # TypeError: the key is encrypted. The server starts unattended, so it takes none.
        raise ConfigError(f"{where}: not an unencrypted PEM private key: {exc}") from exc
    leaf = certificates[0]
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*raw) != leaf.public_key().public_bytes(*raw):
        raise ConfigError(
            f"{where}: the private key does not belong to the chain's first certificate "
            f"({leaf.subject.rfc4514_string()}); the signing certificate must come first"
        )
    now = dt.datetime.now(dt.UTC)
    for cert in certificates:
        if cert.not_valid_after_utc < now:
            raise ConfigError(
                f"{where}: certificate {cert.subject.rfc4514_string()} expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )
        if cert.not_valid_before_utc > now:
            raise ConfigError(
                f"{where}: certificate {cert.subject.rfc4514_string()} is not valid until "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            )
    return leaf


def _algorithm(key: Any, where: str) -> str:
    """c2pa's name of the signing algorithm for ``key``."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise ConfigError(f"{where}: the key must be EC P-256/384/521, Ed25519 or RSA (for PS256)")
