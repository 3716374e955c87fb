"""The LoRA adapters resident in one transformer, and switching between them for a pipeline call.

Adapters are loaded with diffusers' PEFT integration (``load_lora_adapter``) under their own names
and never fused into the base weights, so switching is cheap and nothing leaks: every call sets its
exact adapter set and scales (``set_adapters``), and a call without adapters turns LoRA off
(``disable_lora``). At most ``max_loaded`` stay resident; the least recently used one is deleted
(``delete_adapters``) to make room, never one the current call needs.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cogserve.engine.lora import AdapterInfo, BadAdapter, LoraRegistry
from cogserve.errors import GenerationFailed

log = logging.getLogger(__name__)


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """Silence two warnings that are wrong here: peft's "multiple adapters" (that is the point), and
    diffusers' "missing keys", which matches keys by substring and so lists another adapter's keys
    whenever one name is part of another (``a`` in ``transformer_blocks``). The registry has already
    checked every key against the model."""
    noisy = logging.getLogger("diffusers.utils.peft_utils")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        noisy.setLevel(level)


class AdapterUnavailable(GenerationFailed):
    """An adapter named by a request vanished or broke between its check and its load."""


class ResidentAdapters:
    """Owned by the engine; every method runs on its worker thread, under its pipeline lock."""

    def __init__(self, registry: LoraRegistry) -> None:
        self.registry = registry
        # name -> stamp of the files it was loaded from; order = least recently used first.
        self._loaded: OrderedDict[str, tuple[int, ...]] = OrderedDict()

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def activate(self, transformer: Any, loras: Sequence[tuple[str, float]]) -> None:
        """Make exactly ``loras`` (name, scale) active on ``transformer``; none turns LoRA off."""
        if not loras:
            # Asks the transformer, not this object's records: any adapter in it is turned off.
            if getattr(transformer, "peft_config", None):
                transformer.disable_lora()
            return
        infos = []
        for name, _ in loras:
            info = self.registry.get(name)
            if info is None:
                raise AdapterUnavailable(f"LoRA adapter '{name}' is no longer available")
            infos.append(info)
        wanted = {info.name for info in infos}
        for info in infos:
            self._ensure(transformer, info, keep=wanted)
        transformer.enable_lora()
        transformer.set_adapters([name for name, _ in loras], [scale for _, scale in loras])

    def _ensure(self, transformer: Any, info: AdapterInfo, keep: set[str]) -> None:
        stamp = self._loaded.get(info.name)
        if stamp == info.stamp:
            self._loaded.move_to_end(info.name)
            return
        if stamp is not None:  # the files changed since it was loaded: load the new ones
            self._delete(transformer, info.name)
        while len(self._loaded) >= self.registry.max_loaded:
            victim = next((name for name in self._loaded if name not in keep), None)
            if victim is None:
                break  # every resident adapter is in this call: go over the limit for it
            self._delete(transformer, victim)
            self.registry.report("evict", victim)
        if info.name in getattr(transformer, "peft_config", {}):
            self._forget(transformer, info.name)  # left by an earlier registry of this engine
        started = time.perf_counter()
        try:
            weights = self.registry.take_weights(info)
        except BadAdapter as exc:
            raise AdapterUnavailable(f"LoRA adapter '{info.name}': {exc}") from exc
        dtype = transformer.dtype
        weights = {key: tensor.to(dtype) for key, tensor in weights.items()}
        config = {"r": info.rank, "lora_alpha": info.alpha, "target_modules": list(info.modules)}
        try:
            with _quiet_peft():
                transformer.load_lora_adapter(weights, prefix=None, adapter_name=info.name, metadata=config)
        except Exception as exc:
            # A half-made adapter must not stay behind under this name.
            self._forget(transformer, info.name)
            raise AdapterUnavailable(f"LoRA adapter '{info.name}' could not be loaded: {exc}") from exc
        self._loaded[info.name] = info.stamp
        self.registry.resident.add(info.name)
        elapsed = time.perf_counter() - started
        log.info("LoRA adapter %r loaded in %.2f s (%d resident)", info.name, elapsed, len(self._loaded))
        self.registry.report("load", info.name, elapsed)

    def unload_all(self, transformer: Any) -> None:
        for name in list(self._loaded):
            self._delete(transformer, name)

    def _delete(self, transformer: Any, name: str) -> None:
        self._loaded.pop(name, None)
        self.registry.resident.discard(name)
        self._forget(transformer, name)

    @staticmethod
    def _forget(transformer: Any, name: str) -> None:
        try:
            transformer.delete_adapters(name)
        except Exception:  # it was never (fully) there
            log.debug("delete_adapters(%r) failed", name, exc_info=True)
