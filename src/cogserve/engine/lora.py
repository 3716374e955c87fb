"""LoRA adapters on disk: finding, checking and describing them (the registry).

An adapter is a folder named after it, holding either PEFT's layout (``adapter_model.safetensors``
with ``adapter_config.json``: what CogKit and ``peft`` save) or diffusers' single file
(``pytorch_lora_weights.safetensors``); or that single file itself, named ``<name>.safetensors``.
Each is checked when found: readable safetensors, only LoRA A/B matrices of one rank, every target a
linear layer of the served transformer with matching shapes. A bad one is logged and skipped, never
fatal. The folder is rescanned on every listing or lookup (a few ``stat`` calls), so adapters
dropped in, replaced or removed take effect without a restart.

Besides the operator's folder (``--lora-dir``), a built-in model may ship adapters of its own (the
shapes model's ``night``); they are served with it, after the operator's (a name in ``--lora-dir``
wins over a shipped one).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cogserve.errors import ConfigError

if TYPE_CHECKING:
    from cogserve.settings import Settings

log = logging.getLogger(__name__)

#: Adapter names are identifiers, never paths: no slash, no dot, so ``../x`` cannot name a file.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
# Key prefixes the savers put before the transformer's module path: PEFT's wrapper, diffusers' component.
_PREFIXES = ("base_model.model.", "transformer.")
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")

#: (in_features, out_features) of each linear layer of the transformer, by module path.
LinearShapes = Mapping[str, tuple[int, int]]
#: Told of adapter loads and evictions: (event, adapter name, seconds the load took).
AdapterListener = Callable[[Literal["load", "evict"], str, float], None]


class BadAdapter(Exception):
    """An adapter that cannot be served; the message says why."""


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    weights: Path
    format: Literal["peft", "diffusers"]
    rank: int
    alpha: float
    #: Module paths in the transformer that the adapter changes.
    modules: tuple[str, ...]
    size_bytes: int
    #: Changes whenever the files change (their mtimes and sizes): a loaded copy older than this is stale.
    stamp: tuple[int, ...]

    @property
    def targets(self) -> tuple[str, ...]:
        """The kinds of layer changed, e.g. ``attn1.to_q``: module paths without the block number."""
        return tuple(sorted({re.sub(r"^transformer_blocks\.[0-9]+\.", "", m) for m in self.modules}))


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def linear_shapes(transformer: Any) -> dict[str, tuple[int, int]]:
    """The transformer's linear layers, as ``LinearShapes``. Call it before any adapter is loaded:
    PEFT wraps the layers it changes."""
    import torch

    return {
        name: (module.in_features, module.out_features)
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def _files(entry: Path) -> tuple[Path, Path | None, Literal["peft", "diffusers"]] | None:
    """(weights, config, format) of a directory entry, or None when it is not an adapter at all."""
    if entry.is_file():
        if entry.suffix == ".safetensors":
            return entry, None, "diffusers"
        return None
    if not entry.is_dir():
        return None
    if (entry / PEFT_WEIGHTS).exists() or (entry / PEFT_CONFIG).exists():
        return entry / PEFT_WEIGHTS, entry / PEFT_CONFIG, "peft"
    if (entry / DIFFUSERS_WEIGHTS).exists():
        return entry / DIFFUSERS_WEIGHTS, None, "diffusers"
    return None


def _stamp(*paths: Path | None) -> tuple[int, ...]:
    stamp: list[int] = []
    for path in paths:
        if path is None:
            continue
        try:
            stat = path.stat()
        except OSError:
            stamp += [-1, -1]
        else:
            stamp += [stat.st_mtime_ns, stat.st_size]
    return tuple(stamp)


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def inspect_adapter(name: str, entry: Path, shapes: LinearShapes | None, max_rank: int) -> AdapterInfo:
    """Check one adapter (BadAdapter says what is wrong). ``shapes``: the served transformer's
    linear layers; None checks the files alone (where no model is loaded, e.g. a Ray ingress)."""
    from safetensors import safe_open

    found = _files(entry)
    if found is None:
        raise BadAdapter(f"no {PEFT_WEIGHTS} + {PEFT_CONFIG} or {DIFFUSERS_WEIGHTS} in it")
    weights, config_path, fmt = found
    if not weights.is_file():
        raise BadAdapter(f"{weights.name} is missing")
    config: dict[str, Any] = {}
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text())
        except FileNotFoundError:
            raise BadAdapter(f"{PEFT_CONFIG} is missing (the PEFT layout needs it)") from None
        except (OSError, ValueError) as exc:
            raise BadAdapter(f"{PEFT_CONFIG} is not readable JSON: {exc}") from None
        if not isinstance(config, dict):
            raise BadAdapter(f"{PEFT_CONFIG} is not a JSON object")
        if config.get("peft_type", "LORA") != "LORA":
            raise BadAdapter(f"peft_type {config.get('peft_type')!r} is not LORA")
        for unsupported in ("use_dora", "lora_bias"):
            if config.get(unsupported):
                raise BadAdapter(f"{unsupported} adapters are not supported")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            shapes_in_file = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types (and OSError) for bad files
        raise BadAdapter(f"{weights.name} is not a readable safetensors file: {exc}") from None
    if not shapes_in_file:
        raise BadAdapter(f"{weights.name} holds no tensors")

    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes_in_file.items():
        match = _KEY.match(_strip(key))
        if match is None:
            raise BadAdapter(f"tensor {key!r} is not a LoRA A/B weight (only plain LoRA is supported)")
        pairs.setdefault(match["module"], {})[match["part"]] = shape
    ranks: set[int] = set()
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            raise BadAdapter(f"{module} has lora_{'A' if 'A' in parts else 'B'} without its pair")
        a, b = parts["A"], parts["B"]
        if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
            raise BadAdapter(f"{module}: lora_A {list(a)} and lora_B {list(b)} are not a rank-r pair")
        ranks.add(a[0])
        if shapes is None:
            continue
        if module not in shapes:
            raise BadAdapter(f"target {module} is not a linear layer of the served transformer")
        in_features, out_features = shapes[module]
        if (a[1], b[0]) != (in_features, out_features):
            raise BadAdapter(
                f"{module}: the adapter is {a[1]}->{b[0]} but the served layer is "
                f"{in_features}->{out_features} (made for another model?)"
            )
    if len(ranks) != 1:
        raise BadAdapter(f"mixed ranks {sorted(ranks)}; one rank per adapter is supported")
    rank = ranks.pop()
    if rank > max_rank:
        raise BadAdapter(f"rank {rank} is above the limit of {max_rank} (max_lora_rank)")
    if config and config.get("r") not in (None, rank):
        raise BadAdapter(f"{PEFT_CONFIG} says r={config.get('r')} but the weights have rank {rank}")
    alpha = _alpha(config, metadata, rank)
    return AdapterInfo(
        name=name,
        weights=weights,
        format=fmt,
        rank=rank,
        alpha=alpha,
        modules=tuple(sorted(pairs)),
        size_bytes=weights.stat().st_size,
        stamp=_stamp(weights, config_path),
    )


def _alpha(config: dict[str, Any], metadata: dict[str, str], rank: int) -> float:
    """lora_alpha: PEFT's config, or the metadata diffusers' ``save_lora_weights`` writes; else the
    rank (scaling 1), as diffusers assumes for a file without either."""
    value: Any = config.get("lora_alpha")
    if value is None and "lora_adapter_metadata" in metadata:
        try:
            saved = json.loads(metadata["lora_adapter_metadata"])
            value = saved.get("transformer.lora_alpha", saved.get("lora_alpha"))
        except (ValueError, AttributeError):
            value = None
    if value is None:
        return float(rank)
    if not isinstance(value, int | float) or value <= 0:
        raise BadAdapter(f"lora_alpha {value!r} is not a positive number")
    return float(value)


def read_weights(info: AdapterInfo) -> dict[str, Any]:
    """The adapter's tensors, keyed by ``<module>.lora_A.weight`` / ``.lora_B.weight`` (blocking)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(info.weights))
    except Exception as exc:
        raise BadAdapter(f"{info.weights} could not be read: {exc}") from exc
    return {_strip(key): tensor for key, tensor in tensors.items()}


class LoraRegistry:
    """The adapters of the operator's folder and of the served model's own, checked; safe to call from
    the event loop and the worker thread."""

    @classmethod
    def from_settings(cls, settings: Settings) -> LoraRegistry | None:
        """The registry of ``lora.dir`` and of the served built-in model's shipped adapters; None when
        there are neither. ConfigError when ``lora.dir`` is set but peft is missing or the folder is."""
        from cogserve.engine.builtin import shipped_adapters

        folder, shipped = settings.lora.dir, shipped_adapters(settings.model)
        if folder is None and shipped is None:
            return None
        try:
            import peft  # noqa: F401
        except ImportError:
            if folder is None:  # only the built-in model's own: serve without them, say how to get them
                log.info("the built-in model's LoRA adapters need peft: pip install 'cogserve[lora]'")
                return None
            raise ConfigError(
                "LoRA adapters (lora.dir) need the peft package: pip install 'cogserve[lora]' "
                "(or pip install peft)"
            ) from None
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"the LoRA folder {folder} does not exist or is not a folder")
        lora = settings.lora
        return cls(folder, shipped=shipped, max_rank=lora.max_rank, max_loaded=lora.max_loaded)

    def __init__(
        self, directory: Path | None, *, shipped: Path | None = None, max_rank: int = 256, max_loaded: int = 8
    ) -> None:
        self.directory = directory
        #: Adapters shipped with the served model, read after ``directory``.
        self.shipped = shipped
        self.max_rank = max_rank
        self.max_loaded = max_loaded
        #: Hears of loads and evictions (metrics); set by the app.
        self.listener: AdapterListener | None = None
        self._shapes: LinearShapes | None = None
        self._lock = threading.Lock()
        # name -> (stamp of its files, the adapter or why it was refused)
        self._seen: dict[str, tuple[tuple[int, ...], AdapterInfo | str]] = {}
        #: Names loaded in the model now; kept by the engine's ``ResidentAdapters``.
        self.resident: set[str] = set()
        # Weights read ahead of their load (``prefetch``), by name: (stamp, tensors); oldest first.
        self._staged: OrderedDict[str, tuple[tuple[int, ...], dict[str, Any]]] = OrderedDict()

    @property
    def folders(self) -> list[Path]:
        """Where adapters are looked for, the operator's first."""
        return [folder for folder in (self.directory, self.shipped) if folder is not None]

    def bind(self, shapes: LinearShapes) -> None:
        """Check adapters against this transformer from now on (the engine calls it once loaded)."""
        with self._lock:
            self._shapes = dict(shapes)
            self._seen.clear()

    def adapters(self) -> list[AdapterInfo]:
        """The servable adapters, by name (rescans first)."""
        return [entry for entry in self._scan().values() if isinstance(entry, AdapterInfo)]

    def refused(self) -> dict[str, str]:
        """Adapters found but refused, with why."""
        return {name: entry for name, entry in self._scan().items() if isinstance(entry, str)}

    def get(self, name: str) -> AdapterInfo | None:
        if not valid_name(name):
            return None
        entry = self._scan().get(name)
        return entry if isinstance(entry, AdapterInfo) else None

    def names(self) -> list[str]:
        return [info.name for info in self.adapters()]

    @property
    def bound(self) -> bool:
        """Whether a model in this process serves these adapters (not so in a Ray ingress)."""
        return self._shapes is not None

    def prefetch(self, names: list[str]) -> None:
        """Read the weights of adapters not loaded yet (blocking; the service runs it on a thread as
        a request is admitted), so the pipeline's worker later only moves them into the model
        instead of also waiting for the disk while other requests wait for it."""
        for name in names:
            info = self.get(name)
            if info is None or name in self.resident:
                continue
            with self._lock:
                staged = self._staged.get(name)
                if staged is not None and staged[0] == info.stamp:
                    continue
            try:
                tensors = read_weights(info)
            except BadAdapter:
                continue  # the load will say so, for the request that needs it
            with self._lock:
                self._staged[name] = (info.stamp, tensors)
                while len(self._staged) > self.max_loaded:
                    self._staged.popitem(last=False)

    def take_weights(self, info: AdapterInfo) -> dict[str, Any]:
        """The adapter's tensors: the ones ``prefetch`` read if still current, else read now."""
        with self._lock:
            staged = self._staged.pop(info.name, None)
        if staged is not None and staged[0] == info.stamp:
            return staged[1]
        return read_weights(info)

    def report(self, event: Literal["load", "evict"], name: str, seconds: float = 0.0) -> None:
        if self.listener is not None:
            try:
                self.listener(event, name, seconds)
            except Exception:  # metrics must never fail a batch
                log.exception("adapter listener failed")

    def _scan(self) -> dict[str, AdapterInfo | str]:
        with self._lock:
            current: dict[str, tuple[tuple[int, ...], AdapterInfo | str]] = {}
            for folder in self.folders:
                self._scan_folder(folder, current, shipped=folder == self.shipped)
            self._seen = current
            return {name: entry for name, (_, entry) in current.items()}

    def _scan_folder(
        self, folder: Path, current: dict[str, tuple[tuple[int, ...], AdapterInfo | str]], *, shipped: bool
    ) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            log.warning("cannot read the LoRA folder %s: %s", folder, exc)
            return
        names_before = set(current)
        for entry in entries:
            name = entry.stem if entry.is_file() else entry.name
            found = _files(entry)
            if found is None or name.startswith("."):
                continue
            if shipped and name in names_before:
                continue  # the operator's adapter of that name is served instead
            if not valid_name(name):
                why = f"the name {name!r} is not an identifier ({NAME_PATTERN})"
                self._remember(current, folder, name, (), why)
                continue
            if name in current:
                why = "two adapters share this name (a folder and a file?)"
                self._remember(current, folder, name, (), why)
                continue
            stamp = _stamp(found[0], found[1])
            previous = self._seen.get(name)
            if previous is not None and previous[0] == stamp:
                current[name] = previous
                continue
            try:
                info: AdapterInfo | str = inspect_adapter(name, entry, self._shapes, self.max_rank)
            except BadAdapter as exc:
                info = str(exc)
            self._remember(current, folder, name, stamp, info)

    def _remember(
        self,
        current: dict[str, tuple[tuple[int, ...], AdapterInfo | str]],
        folder: Path,
        name: str,
        stamp: tuple[int, ...],
        entry: AdapterInfo | str,
    ) -> None:
        previous = self._seen.get(name)
        if isinstance(entry, str) and (previous is None or previous[1] != entry):
            log.warning("LoRA adapter %r in %s skipped: %s", name, folder, entry)
        elif isinstance(entry, AdapterInfo) and (previous is None or previous[1] != entry):
            log.info("LoRA adapter %r: rank %d, %d layers", name, entry.rank, len(entry.modules))
        current[name] = (stamp, entry)
