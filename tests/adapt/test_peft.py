"""PEFT as model transformations: LoRA agrees with Hugging Face PEFT, merging is exact, each method trains
only what it should, adapter files round-trip and refuse the wrong base.

Models are small and random (nothing is downloaded); LoRA's B matrices are randomised wherever a test
compares outputs, so that a missing, misplaced or mis-scaled update shows.
"""

import copy
import json
import time

import pytest
import torch
import torch.nn.functional as F

from gptkit.checkpoint import load_model, save_checkpoint
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.inference.generate import generate
from gptkit.inference.sampling import SamplingParams
from gptkit.models.gpt import GPT
from gptkit.adapt.adalora import AdaLoRAAllocator, orthogonal_regularization, peft_loss_terms
from gptkit.adapt.files import load_adapter, peft_state_dict, save_adapter
from gptkit.adapt.modules import LoRALinear, SVDPart
from gptkit.adapt.peft import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, PeftConfig, apply_peft, merge_peft, trainable_parameters
from gptkit.tokenizer import Tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. hello world, how are you today? hi there."


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_bpe([TEXT * 4], vocab_size=300)


def small_gpt(vocab: int = 300, seed: int = 0, **overrides) -> GPT:
    """A random 2-layer model; weights N(0, 0.1^2) so that layers matter to the logits."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=32)
    model = GPT(ModelConfig(**{**fields, **overrides}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 and name.endswith("weight") else 0.0))
    return model.eval()


def tiny_llama(seed: int = 0, **overrides) -> GPT:
    return small_gpt(seed=seed, **{**ModelConfig.from_preset("tiny-llama").to_dict(), "name": "tiny-llama",
                                   "vocab_size": 300, "block_size": 64, "n_layer": 2, **overrides})


def randomize_lora_(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def ids(vocab: int = 300, shape=(2, 16), seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def train_steps(model: GPT, steps: int = 5, lr: float = 1e-2, hook=None) -> None:
    """A few AdamW steps on next-token loss over fixed random ids (+ PEFT's loss terms)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    x = ids(model.config.vocab_size, (4, 17), seed=7)
    model.train()
    for step in range(steps):
        out = model(x[:, :-1])
        loss = F.cross_entropy(out.flatten(0, 1), x[:, 1:].flatten()) + peft_loss_terms(model)
        loss.backward()
        opt.step()
        if hook is not None:
            hook.after_optimizer_step(step)
        opt.zero_grad(set_to_none=True)
    model.eval()


# ------------------------------------------------------------------------------------------------
# (1) parity with Hugging Face PEFT


def test_lora_matches_hf_peft_and_merges_like_it(tmp_path, tok):
    transformers = pytest.importorskip("transformers")
    hf_peft = pytest.importorskip("peft")
    from gptkit.interop import export_hf, import_hf

    config = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_id,
                                     eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.dim() == 1 and "ln" in name and "weight" in name else 0.0))
    hf.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf")
    x = ids(tok.vocab_size)
    base_logits = logits(hf, x).logits
    lora = hf_peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], lora_dropout=0.0,
                              fan_in_fan_out=True)  # c_proj matches attn.c_proj and mlp.c_proj
    theirs = hf_peft.get_peft_model(hf, lora).eval()
    randomize_lora_(theirs)

    ours, _ = load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    apply_peft(ours, PeftConfig(rank=4, alpha=8, targets=["qkv", "o", "fc", "mlp_proj"]))
    # PEFT's A and B are nn.Linear weights even around GPT-2's transposed Conv1D: no transposes needed.
    names = {"attn.c_attn": ("attn.qkv", "qkv"), "attn.c_proj": ("attn.proj", "o"), "mlp.c_fc": ("mlp.fc", "fc"),
             "mlp.c_proj": ("mlp.proj", "mlp_proj")}
    theirs_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for i in range(2):
            for hf_name, (path, target) in names.items():
                for ab in "AB":
                    src = theirs_params[f"base_model.model.transformer.h.{i}.{hf_name}.lora_{ab}.default.weight"]
                    getattr(ours.get_submodule(f"blocks.{i}.{path}").lora[target], ab).copy_(src)
    unmerged, reference = logits(ours, x), theirs(x).logits.detach()
    assert max_diff(unmerged, reference) <= 1e-4
    assert max_diff(unmerged, base_logits) > 1e-2  # the updates matter: the comparison is not trivial
    merged_theirs = logits(theirs.merge_and_unload(), x).logits
    merge_peft(ours)
    assert type(ours.blocks[0].attn.qkv) is torch.nn.Linear and not hasattr(ours, "peft_state")
    merged = logits(ours, x)
    assert max_diff(merged, unmerged) <= 1e-5
    assert max_diff(merged, merged_theirs) <= 1e-4
    # The merged model is a plain GPT: a checkpoint and a Hugging Face export take it as is.
    back = export_hf(save_checkpoint(tmp_path / "merged", ours, tok), tmp_path / "hf-merged")
    exported = transformers.GPT2LMHeadModel.from_pretrained(back).eval()
    assert max_diff(logits(exported, x).logits, merged) <= 1e-4


# ------------------------------------------------------------------------------------------------
# (2) LoRA basics, (3) adapters, (5) freeze


def test_lora_starts_at_base_trains_only_lora_and_leaves_base_alone():
    model = small_gpt()
    x = ids()
    before = logits(model, x)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_peft(model, PeftConfig(rank=4, targets=["q", "v", "mlp"]))
    assert isinstance(model.blocks[1].attn.qkv, LoRALinear) and model.lm_head.weight is model.tok_emb.weight
    assert torch.equal(logits(model, x), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora." in n for n in trainable)
    assert {n.rsplit(".", 2)[-2] for n in trainable} == {"q", "v", "fc", "mlp_proj"}
    train_steps(model)
    assert max_diff(logits(model, x), before) > 1e-3
    after = model.state_dict()
    for name, value in base_state.items():  # the base's tensors sit under `.base.` in wrapped layers
        wrapped = name.replace("attn.qkv.", "attn.qkv.base.").replace("mlp.fc.", "mlp.fc.base.") \
            .replace("mlp.proj.", "mlp.proj.base.")
        assert torch.equal(after[wrapped], value), name


def test_lora_on_gpt2_small_trains_under_two_percent():
    with torch.device("meta"):  # shapes only: counting needs no weights
        model = GPT(ModelConfig.from_preset("gpt2"))
    apply_peft(model, PeftConfig(rank=8, targets=["q", "v"]))
    trainable, total = trainable_parameters(model)
    assert trainable == 12 * 2 * (8 * 768 + 768 * 8)  # 294,912: A and B for q and v in 12 layers
    assert total == 124_439_808 + trainable  # GPT-2 small, tied head counted once
    assert trainable / total < 0.02


def test_adapter_starts_at_base_trains_and_generates(tok):
    model = small_gpt(tok.vocab_size)
    x = ids(tok.vocab_size)
    before = logits(model, x)
    apply_peft(model, PeftConfig(method="adapter", adapter_size=8))
    assert torch.equal(logits(model, x), before)
    assert all(".adapter." in n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable_parameters(model)[0] == 2 * 2 * (32 * 8 + 8 + 8 * 32 + 32)
    train_steps(model)
    after = logits(model, x)
    assert max_diff(after, before) > 1e-3
    # KV-cache decoding goes through the wrapped attention: its first greedy token is the full forward's argmax.
    prompt = tok.encode("hi")
    out = generate(model, tok, ["hi"], SamplingParams(max_tokens=3, temperature=0))[0]
    assert out.token_ids[0] == logits(model, torch.tensor([prompt]))[0, -1].argmax().item()
    with pytest.raises(GptkitError, match="adapters cannot be merged"):
        merge_peft(model)


def test_freeze_trains_exactly_the_top_blocks():
    model = small_gpt(n_layer=4)
    apply_peft(model, PeftConfig(method="freeze", train_top_blocks=1, train_norms=False, train_head=False))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("blocks.3.")}
    merge_peft(model)
    apply_peft(model, PeftConfig(method="freeze", train_top_blocks=2, train_norms=True, train_head=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    top = {n for n, _ in model.named_parameters() if n.startswith(("blocks.2.", "blocks.3."))}
    norms = {n for n, _ in model.named_parameters() if ".norm" in n or n.startswith("norm_f.")}
    assert trainable == top | norms | {"tok_emb.weight"}  # the tied head is the embedding
    merge_peft(model)
    apply_peft(model, PeftConfig(method="full"))
    assert all(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# (4) AdaLoRA


def test_adalora_prunes_to_the_target_budget_and_merges_exactly():
    model = small_gpt()
    x = ids()
    before = logits(model, x)
    cfg = PeftConfig(method="adalora", targets=["q", "v", "o"], init_rank=6, target_rank=2, tinit=4, tfinal=4,
                     delta_t=3)
    apply_peft(model, cfg)
    assert torch.equal(logits(model, x), before)  # Λ starts at zero
    allocator = AdaLoRAAllocator(model, total_steps=30)
    matrices = 2 * 3
    assert allocator.init_budget == 6 * matrices and allocator.target_budget == 2 * matrices
    budgets = [allocator.budget_at(t) for t in range(31)]
    assert budgets[4] == 36 and budgets[26:] == [12] * 5 and budgets == sorted(budgets, reverse=True)

    seen: list[int] = []

    class Record:
        def after_optimizer_step(self, step: int) -> None:
            allocator.after_optimizer_step(step)
            seen.append(allocator.active())

    train_steps(model, steps=30, hook=Record())
    assert seen[:4] == [36] * 4 and seen[-1] == 12 and 12 < max(seen[6:12])
    assert seen == sorted(seen, reverse=True)
    unmerged = logits(model, x)
    assert max_diff(unmerged, before) > 1e-4
    merge_peft(model)
    assert max_diff(logits(model, x), unmerged) <= 1e-5


def test_adalora_keeps_the_triplets_with_the_highest_importance():
    """Scores follow the paper: EMAs of |w·grad| and of its deviation, per (Λ_i, row i of P, column i of Q)."""
    model = apply_peft(small_gpt(), PeftConfig(method="adalora", targets=["q", "v"], init_rank=4, target_rank=2,
                                               tfinal=1, sensitivity_beta=0.7, uncertainty_beta=0.6))
    allocator = AdaLoRAAllocator(model, total_steps=3)  # the final allocation comes after step 2 of 3
    parts = [m for m in model.modules() if isinstance(m, SVDPart)]
    g = torch.Generator().manual_seed(0)
    history: dict[tuple[int, str], list[torch.Tensor]] = {}
    for step in range(2):
        assert allocator.active() == 16  # 4 matrices x init_rank 4, until the allocation
        for i, part in enumerate(parts):
            for name in ("lam", "P", "Q"):
                w = getattr(part, name)
                with torch.no_grad():
                    w.copy_(torch.randn(w.shape, generator=g))
                w.grad = torch.randn(w.shape, generator=g)
                history.setdefault((i, name), []).append((w * w.grad).abs().detach())
        allocator.after_optimizer_step(step)

    def smoothed(series: list[torch.Tensor]) -> torch.Tensor:
        mean = unc = torch.zeros_like(series[0])
        for sensitivity in series:
            mean = 0.7 * mean + 0.3 * sensitivity
            unc = 0.6 * unc + 0.4 * (sensitivity - mean).abs()
        return mean * unc

    scores = torch.cat([smoothed(history[(i, "lam")]) + smoothed(history[(i, "P")]).mean(dim=1)
                        + smoothed(history[(i, "Q")]).mean(dim=0) for i in range(len(parts))])
    masks = torch.cat([p.mask for p in parts])
    assert masks.sum() == allocator.target_budget == 8
    assert set(masks.nonzero().flatten().tolist()) == set(scores.topk(8).indices.tolist())
    allocator.after_optimizer_step(2)  # the final phase: the allocation stays
    assert torch.equal(torch.cat([p.mask for p in parts]), masks)


def test_orthogonal_regularization_is_zero_at_init_and_differentiable():
    model = small_gpt()
    assert peft_loss_terms(model).item() == 0  # no PEFT: nothing to add
    apply_peft(model, PeftConfig(method="adalora", targets=["qkv"], init_rank=4, orth_reg=0.5))
    assert orthogonal_regularization(model).item() < 1e-10
    randomize_lora_(model)
    reg = orthogonal_regularization(model)
    assert reg.item() > 0.1
    assert torch.allclose(peft_loss_terms(model), 0.5 * reg)
    reg.backward()
    part = model.blocks[0].attn.qkv.lora["qkv"]
    assert part.P.grad is not None and part.P.grad.abs().sum() > 0 and part.Q.grad.abs().sum() > 0


def test_adalora_allocator_runs_as_a_training_loop_hook(tmp_path, tok):
    from gptkit.training.loop import TrainConfig, train

    class RandomTokens:  # a minimal Task: fixed random sequences
        def train_batch(self, step, micro_step, device):
            return ids(tok.vocab_size, (4, 17), seed=step % 3)

        def loss(self, model, batch):
            out = model(batch[:, :-1])
            return F.cross_entropy(out.flatten(0, 1), batch[:, 1:].flatten()) + peft_loss_terms(model)

        def evaluate(self, model, device, *, full):
            return {"val_loss": self.loss(model, ids(tok.vocab_size, (2, 17), seed=9)).item()}

        def tokens_per_batch(self, batch):
            return batch[:, :-1].numel()

    model = small_gpt(tok.vocab_size)
    apply_peft(model, PeftConfig(method="adalora", targets=["q", "v"], init_rank=4, target_rank=1, delta_t=2))
    allocator = AdaLoRAAllocator(model, total_steps=10)
    grads_present: list[bool] = []

    class CheckGrads:
        def after_optimizer_step(self, step: int) -> None:
            grads_present.append(model.blocks[0].attn.qkv.lora["q"].lam.grad is not None)

    cfg = TrainConfig(max_iters=10, batch_size=4, warmup_iters=0, eval_interval=10, learning_rate=1e-2, device="cpu")
    train(model, RandomTokens(), cfg, tokenizer=tok, run_dir=tmp_path / "run", quiet=True,
          hooks=[allocator, CheckGrads()])
    assert grads_present == [True] * 10
    assert allocator.active() == allocator.target_budget == 4
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".lora." not in n)


# ------------------------------------------------------------------------------------------------
# (6) adapter files


@pytest.mark.parametrize("cfg", [PeftConfig(rank=4, targets=["q", "v"]),
                                 PeftConfig(method="adalora", targets=["k", "o"], init_rank=4, target_rank=2),
                                 PeftConfig(method="adapter", adapter_size=4),
                                 PeftConfig(method="freeze", train_top_blocks=1)], ids=lambda c: c.method)
def test_adapter_files_round_trip(tmp_path, cfg):
    model = apply_peft(small_gpt(), cfg)
    randomize_lora_(model)
    if cfg.method == "adalora":
        model.blocks[1].attn.proj.lora["o"].mask[1:3] = 0  # a pruned allocation must survive the round trip
    x = ids()
    want = logits(model, x)
    out = save_adapter(model, cfg, tmp_path / "adapter", base_checkpoint_info="ckpt/base")
    saved = json.loads((out / ADAPTER_CONFIG_FILE).read_text())
    assert saved["peft"] == cfg.to_dict() and saved["base"]["info"] == {"path": "ckpt/base"}
    size = (out / ADAPTER_WEIGHTS_FILE).stat().st_size
    n_saved = sum(t.numel() for t in peft_state_dict(model).values())
    assert n_saved * 4 < size < n_saved * 4 + 8192  # only these tensors, fp32, plus the header
    fresh = small_gpt()  # the same base, rebuilt
    assert load_adapter(fresh, out) == cfg
    assert torch.equal(logits(fresh, x), want)


def test_gpt2_small_lora_adapter_file_size(tmp_path):
    start = time.perf_counter()
    model = GPT(ModelConfig.from_preset("gpt2"))
    cfg = PeftConfig(rank=8, targets=["q", "v"])
    apply_peft(model, cfg)
    out = save_adapter(model, cfg, tmp_path / "adapter")
    size = (out / ADAPTER_WEIGHTS_FILE).stat().st_size
    assert 294_912 * 4 < size < 294_912 * 4 + 16_384  # 1.18 MB; the base is 498 MB
    assert time.perf_counter() - start < 60


def test_adapter_refuses_a_different_base(tmp_path):
    cfg = PeftConfig(rank=4)
    out = save_adapter(apply_peft(small_gpt(seed=0), cfg), cfg, tmp_path / "adapter", base_checkpoint_info="ckpt/A")
    with pytest.raises(GptkitError, match=r"trained on base 'custom' \(2 layers.*ckpt/A.*weights differ"):
        load_adapter(small_gpt(seed=1), out)  # same shape, other weights
    with pytest.raises(GptkitError, match=r"different base model: it expects 'custom' \(2 layers.*n_layer=2 "
                                          r"\(this model: 3\)"):
        load_adapter(small_gpt(n_layer=3), out)
    refused = small_gpt(seed=1)
    with pytest.raises(GptkitError):
        load_adapter(refused, out)
    assert not hasattr(refused, "peft_state") and all(p.requires_grad for p in refused.parameters())


def test_missing_or_corrupt_adapter_files(tmp_path):
    cfg = PeftConfig(rank=4)
    model = apply_peft(small_gpt(), cfg)
    with pytest.raises(GptkitError, match="does not exist"):
        load_adapter(small_gpt(), tmp_path / "nowhere")
    out = save_adapter(model, cfg, tmp_path / "adapter")
    (out / ADAPTER_WEIGHTS_FILE).write_bytes(b"not safetensors")
    base = small_gpt()
    with pytest.raises(GptkitError, match="not a readable safetensors file"):
        load_adapter(base, out)
    assert not hasattr(base, "peft_state")
    (out / ADAPTER_WEIGHTS_FILE).unlink()
    with pytest.raises(GptkitError, match=f"has no {ADAPTER_WEIGHTS_FILE}"):
        load_adapter(small_gpt(), out)
    (out / ADAPTER_CONFIG_FILE).write_text("{oops")
    with pytest.raises(GptkitError, match="not valid JSON"):
        load_adapter(small_gpt(), out)
    (out / ADAPTER_CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "r": 8}))  # Hugging Face PEFT's
    with pytest.raises(GptkitError, match="not a gptkit adapter config"):
        load_adapter(small_gpt(), out)
    (out / ADAPTER_CONFIG_FILE).unlink()
    with pytest.raises(GptkitError, match=f"has no {ADAPTER_CONFIG_FILE}"):
        load_adapter(small_gpt(), out)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(GptkitError, match="not an adapter directory"):
        save_adapter(model, cfg, tmp_path / "busy")


def test_adapter_with_wrong_tensors_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = PeftConfig(rank=4)
    out = save_adapter(apply_peft(small_gpt(), cfg), cfg, tmp_path / "adapter")
    tensors = load_file(str(out / ADAPTER_WEIGHTS_FILE))
    del tensors["blocks.1.attn.qkv.lora.v.B"]
    save_file(tensors, str(out / ADAPTER_WEIGHTS_FILE))
    with pytest.raises(GptkitError, match=r"missing \['blocks.1.attn.qkv.lora.v.B'\]"):
        load_adapter(small_gpt(), out)


# ------------------------------------------------------------------------------------------------
# (7) bad configs


@pytest.mark.parametrize("fields,needle", [
    (dict(targets=["c_attn"]), r"'c_attn' match nothing.*valid targets are q, k, v"),
    (dict(targets=[]), "targets is empty"),
    (dict(targets=["qkv", "q"]), "'qkv' already covers q"),
    (dict(method="prefix"), "method must be one of full, lora, adapter, adalora, freeze"),
    (dict(rank=0), "rank must be >= 1"),
    (dict(alpha=0), "alpha must be positive"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(method="adalora", init_rank=2, target_rank=3), "target_rank <= init_rank"),
    (dict(method="adalora", sensitivity_beta=1.0), r"sensitivity_beta must be in \[0, 1\)"),
    (dict(method="adalora", delta_t=0), "delta_t must be >= 1"),
    (dict(method="adapter", adapter_size=0), "adapter_size must be >= 1"),
    (dict(method="freeze", train_top_blocks=-1), "train_top_blocks must be >= 0"),
    (dict(method="freeze", train_top_blocks=3), r"train_top_blocks \(3\) exceeds the model's 2 blocks"),
    (dict(method="adalora", targets=["k"], init_rank=40), r"init_rank 40 exceeds the smallest side \(32\)"),
])
def test_bad_configs_are_refused(fields, needle):
    with pytest.raises(GptkitError, match=needle):
        apply_peft(small_gpt(), PeftConfig(**fields))


def test_bad_uses_are_refused():
    model = apply_peft(small_gpt(), PeftConfig())
    with pytest.raises(GptkitError, match="already has PEFT applied"):
        apply_peft(model, PeftConfig())
    with pytest.raises(GptkitError, match="needs a model transformed by apply_peft with method='adalora'"):
        AdaLoRAAllocator(model, total_steps=10)
    with pytest.raises(GptkitError, match="unknown field"):
        PeftConfig.from_dict({"method": "lora", "r": 8})
    adalora = apply_peft(small_gpt(), PeftConfig(method="adalora", tinit=5, tfinal=5))
    with pytest.raises(GptkitError, match=r"tinit \(5\) \+ tfinal \(5\) must be less than the total steps \(10\)"):
        AdaLoRAAllocator(adalora, total_steps=10)


# ------------------------------------------------------------------------------------------------
# (8) generation, (9) Llama family


def test_generation_with_lora_matches_the_merged_model(tok):
    model = apply_peft(small_gpt(tok.vocab_size), PeftConfig(rank=4, targets=["qkv", "o", "mlp", "head"]))
    randomize_lora_(model)
    params = SamplingParams(max_tokens=5, temperature=0)
    wrapped = generate(model, tok, ["hi", "the quick"], params)
    merge_peft(model)
    assert not model.config.tie_embeddings  # the head's own update unties it from the embedding
    merged = generate(model, tok, ["hi", "the quick"], params)
    assert [c.token_ids for c in wrapped] == [c.token_ids for c in merged]
    assert all(len(c.token_ids) == 5 for c in wrapped)


def test_lora_on_grouped_query_llama_slices_and_merges():
    model = tiny_llama()
    assert model.config.n_kv_head == 2 and model.config.n_head == 4  # q is 128 rows, k and v 64 each
    x = ids()
    before = logits(model, x)
    apply_peft(model, PeftConfig(rank=4, targets=["q", "k", "v", "o", "fc", "head"]))
    qkv = model.blocks[0].attn.qkv
    assert qkv.slices == {"q": (0, 128), "k": (128, 192), "v": (192, 256)}
    assert [tuple(qkv.lora[t].B.shape) for t in "qkv"] == [(128, 4), (64, 4), (64, 4)]
    assert tuple(model.blocks[0].mlp.fc.lora["fc"].B.shape) == (2 * model.config.intermediate_size, 4)
    assert torch.equal(logits(model, x), before)
    randomize_lora_(model)
    # Each slice's update lands in its own rows: without k's update, k's rows of the delta are zero.
    with torch.no_grad():
        saved_k = qkv.lora["k"].B.clone()
        qkv.lora["k"].B.zero_()
        delta = qkv.delta_weight()
        assert delta[:128].abs().min(dim=1).values.gt(0).all() and delta[192:].abs().sum() > 0
        assert delta[128:192].abs().sum() == 0
        qkv.lora["k"].B.copy_(saved_k)
    unmerged = logits(model, x)
    assert max_diff(unmerged, before) > 1e-3
    # Merging is exact up to rounding: in float64 to 1e-10; in float32 to 1e-5 of the logits' scale (about 3 here).
    model64 = copy.deepcopy(model).double()
    unmerged64 = logits(model64, x)
    merge_peft(model64)
    assert max_diff(logits(model64, x), unmerged64) <= 1e-10
    merge_peft(model)
    assert max_diff(logits(model, x), unmerged) <= 1e-5 * unmerged.abs().max().item()
    assert all(type(m) is not LoRALinear for m in model.modules())
