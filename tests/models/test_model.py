import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.models.gpt import GPT, KVCache

FAMILIES = {
    "gpt2": dict(position="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True),
    "llama": dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2),
}


def small_model(family: str, **overrides) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, **{**FAMILIES[family], **overrides})
    return GPT(config).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_changing_a_future_token_never_changes_earlier_logits(family):
    model = small_model(family)
    idx = torch.randint(0, 97, (2, 20))
    changed = idx.clone()
    changed[:, 12] = (changed[:, 12] + 1) % 97
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_decoding_equals_full_forward(family):
    model = small_model(family)
    idx = torch.randint(0, 97, (3, 24))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.allocate(model.config, batch_size=3, max_len=32)
        prefill = model(idx[:, :10], input_pos=torch.arange(10), kv_cache=cache)
        steps = [model(idx[:, t:t + 1], input_pos=torch.tensor([t]), kv_cache=cache) for t in range(10, 24)]
    incremental = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_rows_in_one_cache_match_separate_runs(family):
    """Rows at different positions (a serving engine's slots) decode independently."""
    model = small_model(family)
    short, long = torch.randint(0, 97, (1, 5)), torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        cache = KVCache.allocate(model.config, batch_size=2, max_len=32)
        model(short, input_pos=torch.arange(5), kv_cache=cache.rows(slice(0, 1)))
        model(long, input_pos=torch.arange(9), kv_cache=cache.rows(slice(1, 2)))
        nxt = torch.tensor([[3], [4]])
        step = model(nxt, input_pos=torch.tensor([[5], [9]]), kv_cache=cache)
        alone_short = model(torch.cat([short, nxt[:1]], 1))[:, -1]
        alone_long = model(torch.cat([long, nxt[1:]], 1))[:, -1]
    torch.testing.assert_close(step[0, -1], alone_short[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(step[1, -1], alone_long[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_with_per_row_positions_equals_full_forward(family):
    """(B, T) positions: rows decoding in step (written as one shared slot) and ragged multi-token chunks."""
    model = small_model(family)
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache.allocate(model.config, batch_size=2, max_len=32)
        model(idx[:, :10], input_pos=torch.arange(10), kv_cache=cache)
        steps = [model(idx[:, t:t + 1], input_pos=torch.full((2, 1), t), kv_cache=cache) for t in range(10, 14)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 10:14], atol=1e-5, rtol=1e-4)

        ragged = KVCache.allocate(model.config, batch_size=2, max_len=32)
        model(idx[:1, :6], input_pos=torch.arange(6), kv_cache=ragged.rows(slice(0, 1)))
        model(idx[1:, :9], input_pos=torch.arange(9), kv_cache=ragged.rows(slice(1, 2)))
        chunk = torch.stack([idx[0, 6:9], idx[1, 9:12]])
        out = model(chunk, input_pos=torch.tensor([[6, 7, 8], [9, 10, 11]]), kv_cache=ragged)
    torch.testing.assert_close(out[0], full[0, 6:9], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[1], full[1, 9:12], atol=1e-5, rtol=1e-4)


def test_kv_cache_position_beyond_its_length_is_an_error():
    model = small_model("gpt2")
    cache = KVCache.allocate(model.config, batch_size=2, max_len=8)
    with torch.no_grad(), pytest.raises(GptkitError, match="position 8 is beyond the KV cache length 8"):
        model(torch.tensor([[1], [2]]), input_pos=torch.tensor([[3], [8]]), kv_cache=cache)


def test_input_embeddings_equal_token_ids():
    model = small_model("llama")
    idx = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), model(inputs_embeds=model.tok_emb(idx)))


def test_tied_and_untied_parameter_counts():
    tied, untied = small_model("gpt2"), small_model("gpt2", tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_parameters() - tied.num_parameters() == 97 * 32


def test_residual_projections_get_scaled_init():
    model = GPT(ModelConfig(vocab_size=97, block_size=32, n_layer=8, n_head=4, n_embd=256))
    proj_std = model.blocks[0].attn.proj.weight.std().item()
    fc_std = model.blocks[0].mlp.fc.weight.std().item()
    assert abs(fc_std - 0.02) < 0.002
    assert abs(proj_std - 0.02 / 4) < 0.001


def test_sequence_longer_than_context_is_a_clear_error():
    model = small_model("gpt2")
    with pytest.raises(GptkitError, match="exceeds the context length 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("bad", [dict(n_embd=30, n_head=4), dict(n_head=4, n_kv_head=3), dict(norm="batchnorm")])
def test_invalid_config_is_rejected(bad):
    with pytest.raises(GptkitError):
        ModelConfig(vocab_size=10, block_size=8, n_layer=1, **{"n_embd": 32, **bad})
