"""``cogserve loras``: list the LoRA adapters a server would serve, and make a test adapter.

``list`` checks each adapter against the model it would apply to (its layers' shapes, read from the
model's config: no weights are loaded), exactly as the server does when it finds one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cogserve.cli.options import (
    EXIT_FAILED,
    Builtin,
    LoraDir,
    MaxLoraRank,
    ModelPath,
    build_settings,
    configure_process,
    fail,
)
from cogserve.errors import CogserveError
from cogserve.settings import Settings

loras_app = typer.Typer(help="LoRA adapters: list what a server would serve, make a test adapter.")


def _settings(
    lora_dir: Path | None, model_path: str | None, builtin: str | None, rank: int | None, *, need_dir: bool
) -> Settings:
    from cogserve.engine.builtin import shipped_adapters

    settings = build_settings(
        lora={"dir": lora_dir, "max_rank": rank}, model={"path": model_path, "builtin": builtin}
    )
    if settings.lora.dir is None and (need_dir or shipped_adapters(settings.model) is None):
        fail("name the adapters' folder with --lora-dir (or COGSERVE_LORA__DIR)")
    configure_process(settings, "warning")
    return settings


def _model_shapes(settings: Settings) -> dict[str, tuple[int, int]]:
    """The served transformer's linear layers, from its config alone (empty weights)."""
    from accelerate import init_empty_weights
    from diffusers import CogView4Transformer2DModel

    from cogserve.engine.loader import locate_model
    from cogserve.engine.lora import linear_shapes

    where, _ = locate_model(settings.model, settings.builtin_model_dir)
    config: Any = CogView4Transformer2DModel.load_config(where, subfolder="transformer")
    with init_empty_weights():
        transformer = CogView4Transformer2DModel.from_config(config)
    return linear_shapes(transformer)


@loras_app.command("list")
def loras_list(
    lora_dir: LoraDir = None,
    model_path: ModelPath = None,
    builtin: Builtin = None,
    max_lora_rank: MaxLoraRank = None,
) -> None:
    """The adapters the model would serve (--lora-dir's, and the shapes model's own), with name, rank,
    size and targets, then the refused ones with why. Exit status 1 when any is refused."""
    from cogserve.engine.lora import LoraRegistry

    settings = _settings(lora_dir, model_path, builtin, max_lora_rank, need_dir=False)
    try:
        registry = LoraRegistry.from_settings(settings)
        if registry is None:  # only shipped adapters, and no peft to serve them
            fail("the built-in model's adapters need peft: pip install 'cogserve[lora]'")
        registry.bind(_model_shapes(settings))
    except CogserveError as exc:
        fail(exc.message)
    adapters, refused = registry.adapters(), registry.refused()
    typer.echo(f"{'name':<24}  {'rank':>4}  {'alpha':>6}  {'size':>10}  {'format':<9}  targets")
    for info in adapters:
        typer.echo(
            f"{info.name:<24}  {info.rank:>4}  {info.alpha:>6g}  {_size(info.size_bytes):>10}  "
            f"{info.format:<9}  {', '.join(info.targets)}"
        )
    for name, why in refused.items():
        typer.secho(f"refused {name}: {why}", err=True, fg=typer.colors.RED)
    if not adapters and not refused:
        typer.echo(f"(no adapters in {', '.join(map(str, registry.folders))})", err=True)
    if refused:
        raise typer.Exit(EXIT_FAILED)


@loras_app.command("make-test")
def loras_make_test(
    name: Annotated[str, typer.Argument(help="The adapter's name: its folder in --lora-dir")],
    lora_dir: LoraDir = None,
    model_path: ModelPath = None,
    builtin: Builtin = None,
    rank: Annotated[int, typer.Option(min=1, help="LoRA rank (CogKit trains 128)")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of its random weights")] = 0,
    strength: Annotated[float, typer.Option(min=0, help="Standard deviation of its weights")] = 0.05,
) -> None:
    """Write an adapter with RANDOM weights in CogKit's layout, for the model served: it changes
    pictures but has learned nothing. For trying LoRA requests end to end."""
    from cogserve.engine.lora import valid_name
    from cogserve.engine.lora_make import random_adapter

    if not valid_name(name):
        fail(f"'{name}' is not an adapter name: letters, digits, _ and -")
    settings = _settings(lora_dir, model_path, builtin, None, need_dir=True)
    assert settings.lora.dir is not None
    try:
        shapes = _model_shapes(settings)
    except CogserveError as exc:
        fail(exc.message)
    out = random_adapter(shapes, settings.lora.dir / name, rank=rank, seed=seed, std=strength)
    typer.echo(str(out))


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size:.1f} GiB"
