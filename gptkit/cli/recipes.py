"""YAML recipes for the CLI: a recipe's keys are a command's flag names; defaults < preset < recipe < flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import tyro
import yaml

from gptkit.adapt.peft import PeftConfig
from gptkit.cli.args import FinetuneFlags, PretrainFlags
from gptkit.config import PRESETS, ModelConfig
from gptkit.errors import GptkitError, require
from gptkit.finetune.job import finetune_train_defaults
from gptkit.training.loop import TrainConfig
from gptkit.training.tasks.adversarial import AdversarialConfig


BUNDLED_RECIPES = Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package (and the wheel)


def resolve_recipe(path: Path) -> Path:
    """A recipe file: `path` itself, or the name of a bundled recipe (`baby` -> gptkit/configs/baby.yaml)."""
    if path.is_file():
        return path
    bundled = BUNDLED_RECIPES / f"{path.name}.yaml"
    if path.parent == Path(".") and path.suffix == "" and bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in BUNDLED_RECIPES.glob("*.yaml")))
    raise GptkitError(f"--config {path} does not exist (bundled recipes: {names})")


def load_recipe(path: Path) -> dict[str, Any]:
    path = resolve_recipe(path)
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GptkitError(f"--config {path} is not valid YAML: {e}") from None
    require(isinstance(recipe, dict), f"--config {path} must hold a mapping of flag names to values")
    return recipe


def apply_recipe(defaults: Any, recipe: dict[str, Any], where: str) -> Any:
    """A copy of dataclass `defaults` with the recipe's values (nested dataclasses recursively)."""
    fields = {f.name: f for f in dataclasses.fields(defaults)}
    changes = {}
    for key, value in recipe.items():
        name = key.replace("-", "_")
        require(name in fields, f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(fields))}")
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = apply_recipe(current, value, f"{where}.{key}")
        elif isinstance(current, Path) or (current is None and name in ("out", "config")):
            value = Path(value)
        changes[name] = value
    return dataclasses.replace(defaults, **changes)


def pretrain_defaults(argv: list[str]) -> tuple[PretrainFlags, dict[str, Any]]:
    """Defaults for `pretrain` after --preset and --config, and the model fields the recipe sets."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", default="tiny")
    early.add_argument("--config", type=Path, default=None)
    known, _ = early.parse_known_args(argv)
    recipe = load_recipe(known.config) if known.config else {}
    preset = known.preset if "--preset" in " ".join(argv) else recipe.get("preset", known.preset)
    require(preset in PRESETS, f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    recipe_model = dict(recipe.pop("model", None) or {})
    recipe.pop("preset", None)
    # Training and adversarial keys may sit at the top level, as their flags do (--max-iters, --adversarial),
    # or under `train:` / `adv:`.
    for nested, type_ in (("train", TrainConfig), ("adv", AdversarialConfig)):
        keys = {f.name for f in dataclasses.fields(type_)}
        flat = {k: recipe.pop(k) for k in list(recipe) if k.replace("-", "_") in keys}
        if flat:
            recipe[nested] = {**(recipe.get(nested) or {}), **flat}
    model = ModelConfig.from_dict({**PRESETS[preset], "name": preset, **recipe_model})
    # Leave derived fields unresolved in the defaults, so that `--model.n-head 2` alone re-derives
    # n_kv_head (and --model.n-embd the MLP width) instead of clashing with the preset's values.
    for derived in ("n_kv_head", "intermediate_size"):
        if derived not in {**PRESETS[preset], **recipe_model}:
            setattr(model, derived, None)
    defaults = PretrainFlags(preset=preset, config=known.config, model=model,
                            out=Path(f"out/pretrain/{preset}"))
    defaults = apply_recipe(defaults, recipe, f"--config {known.config}") if recipe else defaults
    return defaults, recipe_model


def finetune_defaults(argv: list[str]) -> FinetuneFlags:
    """Defaults for `finetune` after --config: its training, method and adversarial keys may sit at the top
    level (as their flags do) or under `train:` / `peft:` / `adv:`."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config", type=Path, default=None)
    known, _ = early.parse_known_args(argv)
    defaults = FinetuneFlags(checkpoint=tyro.MISSING, data=tyro.MISSING)  # type: ignore[arg-type]
    if known.config is None:
        return defaults
    recipe = load_recipe(known.config)
    for nested, type_ in (("train", TrainConfig), ("peft", PeftConfig), ("adv", AdversarialConfig)):
        keys = {f.name for f in dataclasses.fields(type_)}
        flat = {k: recipe.pop(k) for k in list(recipe) if k.replace("-", "_") in keys}
        if flat:
            recipe[nested] = {**(recipe.get(nested) or {}), **flat}
    defaults = dataclasses.replace(defaults, train=finetune_train_defaults(), config=known.config)
    return apply_recipe(defaults, recipe, f"--config {known.config}")
