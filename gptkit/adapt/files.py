"""Adapter files: only the trained tensors (adapter_model.safetensors) and the method's config, with a fingerprint of
the base they belong to."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptkit.errors import GptkitError, require
from gptkit.files import write_atomically
from gptkit.models.gpt import GPT
from gptkit.adapt.modules import PEFT_PARTS
from gptkit.adapt.peft import (ADAPTER_CONFIG_FILE, ADAPTER_FORMAT, ADAPTER_WEIGHTS_FILE, PeftConfig, apply_peft,
                               base_fingerprint, chosen_parameters, peft_state, unwrap_all)


def peft_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: PEFT parameters (+ AdaLoRA masks), or what freeze/full train."""
    state = peft_state(model)
    require(state is not None, "the model has no PEFT applied (apply_peft first)")
    assert state is not None
    if state.config.method in ("lora", "adalora", "adapter"):
        return {f"{prefix}.{name}": t.detach() for prefix, m in model.named_modules() if isinstance(m, PEFT_PARTS)
                for name, t in m.state_dict().items()}
    return {name: p.detach() for name, p in chosen_parameters(model, state.config).items()}


def _describe(config: Mapping[str, Any]) -> str:
    return (f"{config.get('name')!r} ({config.get('n_layer')} layers, n_embd {config.get('n_embd')}, "
            f"{config.get('n_head')} heads / {config.get('n_kv_head')} kv, vocab {config.get('vocab_size')}, "
            f"{config.get('position')}/{config.get('norm')}/{config.get('mlp')})")


def save_adapter(model: GPT, cfg: PeftConfig, out_dir: str | Path,
                 base_checkpoint_info: str | Path | Mapping[str, Any] | None = None) -> Path:
    """Write `adapter_config.json` (cfg + the base's config and fingerprint + `base_checkpoint_info`, e.g.
    the base checkpoint's path) and `adapter_model.safetensors` (only `peft_state_dict`) into `out_dir`."""
    state = peft_state(model)
    require(state is not None, "save_adapter: the model has no PEFT applied (apply_peft first)")
    assert state is not None
    require(cfg.to_dict() == state.config.to_dict(),
            "save_adapter: cfg differs from the PeftConfig the model was transformed with")
    require(state.base_fingerprint is not None, "save_adapter: the base had no readable weights (meta device) "
                                                "when PEFT was applied, so there is no fingerprint to record")
    out = Path(out_dir)
    require(not out.is_file(), f"{out} is a file; pass a directory")
    require(not out.exists() or not any(out.iterdir()) or (out / ADAPTER_CONFIG_FILE).is_file(),
            f"{out} exists and is not an adapter directory; choose an empty or new directory")
    info = {"path": str(base_checkpoint_info)} if isinstance(base_checkpoint_info, (str, Path)) \
        else dict(base_checkpoint_info or {})
    meta = {"format": ADAPTER_FORMAT, "version": 1, "peft": cfg.to_dict(),
            "base": {"config": state.base_config, "fingerprint": state.base_fingerprint, "info": info}}
    tensors = {name: t.contiguous() for name, t in peft_state_dict(model).items()}

    def write(tmp: Path) -> None:
        (tmp / ADAPTER_CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})

    return write_atomically(out, write)


def _read_adapter_config(path: Path) -> dict[str, Any]:
    config_file = path / ADAPTER_CONFIG_FILE
    require(path.is_dir(), f"adapter directory {path} does not exist")
    require(config_file.is_file(), f"{path} has no {ADAPTER_CONFIG_FILE}: not an adapter saved by save_adapter")
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GptkitError(f"{config_file} is not valid JSON: {e}") from None
    require(isinstance(meta, dict) and meta.get("format") == ADAPTER_FORMAT,
            f"{config_file} is not a gptkit adapter config (no \"format\": \"{ADAPTER_FORMAT}\"); "
            "Hugging Face PEFT adapters are not read by gptkit")
    require(isinstance(meta.get("peft"), dict) and isinstance(meta.get("base"), dict)
            and isinstance(meta["base"].get("config"), dict), f"{config_file} lacks its peft or base section")
    return meta


def _check_base(model: GPT, base: Mapping[str, Any], path: Path) -> None:
    """Refuse a base other than the one the adapter was trained on, saying which one it expects."""
    expected, have = base["config"], model.config.to_dict()
    info = f", base checkpoint {base['info']}" if base.get("info") else ""
    ignored = ("name", "dropout")  # informational / training-only
    differ = [f"{k}={expected.get(k)!r} (this model: {have.get(k)!r})" for k in sorted(set(expected) | set(have))
              if k not in ignored and expected.get(k) != have.get(k)]
    require(not differ, f"adapter {path} was trained on a different base model: it expects {_describe(expected)}"
                        f"{info}; differences: {'; '.join(differ)}")
    fingerprint = base_fingerprint(model)
    require(fingerprint == base.get("fingerprint"),
            f"adapter {path} was trained on base {_describe(expected)}{info}: this model has that shape but its "
            f"weights differ (fingerprint {str(fingerprint)[:12]}, expected {str(base.get('fingerprint'))[:12]}); "
            "load the base model the adapter was trained on")


def load_adapter(model: GPT, adapter_dir: str | Path) -> PeftConfig:
    """Check that `model` is the adapter's base, apply its PeftConfig and load its weights; returns the config."""
    path = Path(adapter_dir)
    meta = _read_adapter_config(path)
    cfg = PeftConfig.from_dict(meta["peft"])
    require(peft_state(model) is None, "load_adapter needs the plain base model, but this one already has PEFT applied")
    _check_base(model, meta["base"], path)
    weights_file = path / ADAPTER_WEIGHTS_FILE
    require(weights_file.is_file(), f"{path} has no {ADAPTER_WEIGHTS_FILE}")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as e:
        raise GptkitError(f"{weights_file} is not a readable safetensors file: {e}") from None
    apply_peft(model, cfg)
    try:
        expected = peft_state_dict(model)
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        require(not missing and not unexpected, f"{weights_file} does not match {ADAPTER_CONFIG_FILE}: missing "
                                                f"{missing[:5]}, unexpected {unexpected[:5]}")
        for name, target in expected.items():
            shape, want = tuple(tensors[name].shape), tuple(target.shape)
            require(shape == want, f"{weights_file}: {name} has shape {shape}, expected {want}")
        with torch.no_grad():
            for name, target in expected.items():
                target.copy_(tensors[name])
    except GptkitError:
        unwrap_all(model, fold=False)  # leave the base as it was given
        raise
    return cfg
