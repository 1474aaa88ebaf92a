"""Presets, recipes and the flag/YAML precedence rules."""

import json
from pathlib import Path

import pytest
import torch

from gptkit.cli.recipes import pretrain_defaults
from gptkit.training.pretrain import PretrainArgs
from gptkit.config import PRESETS, ModelConfig
from gptkit.errors import GptkitError
from gptkit.models.gpt import GPT

REPO = Path(__file__).resolve().parents[2]


def test_default_recipe_file_matches_the_built_in_defaults():
    from_file, _ = pretrain_defaults(["--config", str(REPO / "configs" / "tiny.yaml")])
    built_in = PretrainArgs()
    assert from_file.train == built_in.train
    for name in ("preset", "out", "data", "tokenizer", "vocab_size"):
        assert getattr(from_file, name) == getattr(built_in, name), name
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        assert getattr(from_file.model, name) == getattr(built_in.model, name), name


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    args, _ = pretrain_defaults(["--config", str(recipe)])
    args.train.validate()
    assert args.preset in PRESETS
    if args.data and not Path(args.data).exists() and "/" not in str(args.data):  # a bundled corpus: it must ship
        from gptkit.data.prepare import bundled_corpus_path
        assert bundled_corpus_path(str(args.data)).stat().st_size > 0


def test_flags_beat_recipe_which_beats_preset(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: baby\nmax_iters: 7\nmodel:\n  n_layer: 3\n")
    args, model_overrides = pretrain_defaults(["--config", str(recipe)])
    assert args.preset == "baby" and args.train.max_iters == 7 and args.model.n_layer == 3
    assert model_overrides == {"n_layer": 3}
    args, _ = pretrain_defaults(["--config", str(recipe), "--preset", "tiny"])
    assert args.preset == "tiny"


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_a_consistent_config(name):
    config = ModelConfig.from_preset(name)
    assert config.n_head % config.n_kv_head == 0
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_gpt2_preset_has_gpt2_small_parameter_count():
    model = GPT(ModelConfig.from_preset("gpt2"))
    assert model.num_parameters() == 124_439_808  # GPT-2 small, tied head, as reported by Hugging Face


def test_llama_small_preset_uses_llama_features():
    config = ModelConfig.from_preset("llama-small")
    assert (config.position, config.norm, config.mlp, config.bias, config.tie_embeddings) == (
        "rope", "rmsnorm", "swiglu", False, False)
    assert config.n_kv_head < config.n_head


def test_unknown_preset_and_field_are_clear_errors():
    with pytest.raises(GptkitError, match="unknown preset"):
        ModelConfig.from_preset("gpt-7")
    with pytest.raises(GptkitError, match="unknown field"):
        ModelConfig.from_dict({"n_layers": 3})


def test_gelu_approximation_defaults_to_gpt2s_and_changes_the_function(tmp_path):
    # Checkpoints written before the field existed were all trained with GPT-2's tanh GELU.
    saved = ModelConfig.from_preset("tiny", vocab_size=64).to_dict()
    del saved["gelu_approximation"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert ModelConfig.load(tmp_path / "config.json").gelu_approximation == "tanh"
    assert (ModelConfig.from_preset("baby").gelu_approximation, ModelConfig.from_preset("gpt2").gelu_approximation) \
        == ("none", "tanh")

    torch.manual_seed(0)
    exact = GPT(ModelConfig.from_preset("tiny", vocab_size=64, gelu_approximation="none"))
    tanh = GPT(ModelConfig.from_preset("tiny", vocab_size=64, gelu_approximation="tanh"))
    tanh.load_state_dict(exact.state_dict())
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        difference = (exact(x) - tanh(x)).abs().max().item()
    assert 0 < difference < 1e-2  # the two forms differ by < 5e-4 per activation
    with pytest.raises(GptkitError, match="gelu_approximation must be 'tanh' or 'none'"):
        ModelConfig.from_preset("tiny", gelu_approximation="erf")


def test_a_bundled_recipe_is_found_by_name_inside_the_package():
    from gptkit.cli.recipes import BUNDLED_RECIPES

    assert BUNDLED_RECIPES.is_relative_to(REPO / "gptkit")  # shipped in the wheel, not only in a clone
    by_name, _ = pretrain_defaults(["--config", "baby"])
    by_path, _ = pretrain_defaults(["--config", str(BUNDLED_RECIPES / "baby.yaml")])
    assert by_name.train == by_path.train and by_name.model == by_path.model and by_name.preset == "baby"
    with pytest.raises(GptkitError, match="bundled recipes: .*baby"):
        pretrain_defaults(["--config", "no-such-recipe"])
