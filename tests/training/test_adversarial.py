"""Adversarial training (FGM, PGD, FreeLB on input embeddings): the perturbations, the objective, exact resume,
and `gptkit finetune/pretrain --adversarial` end to end."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptkit.adapt.peft import PeftConfig
from gptkit.checkpoint import save_checkpoint
from gptkit.config import ModelConfig
from gptkit.data.dataset import TokenDataset
from gptkit.errors import GptkitError
from gptkit.evaluation.robustness import ascent_direction, per_example_norm, project, random_start
from gptkit.finetune.job import FinetuneArgs, run_finetune
from gptkit.models.gpt import GPT
from gptkit.models.heads import SequenceClassifier
from gptkit.tokenizer import Tokenizer
from gptkit.training.loop import TrainConfig, train
from gptkit.training.tasks import AdversarialConfig, AdversarialTask, CausalLMTask, ClassificationTask
from gptkit.training.tasks.lm import causal_perturbation_mask

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Models this small run fastest on one thread; on a busy machine two threads are 20x slower (sync waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the CLI runs
    yield
    torch.set_num_threads(threads)


def classifier(seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    gpt = GPT(ModelConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return SequenceClassifier(gpt, ["a", "b"])


def task(batch_size: int = 4) -> ClassificationTask:
    """Rows of different lengths, so every batch has padding."""
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, 40, (int(n),), generator=g).tolist() for n in torch.randint(3, 12, (24,), generator=g)]
    labels = [i % 2 for i in range(24)]
    return ClassificationTask(rows, labels, rows[:8], labels[:8], ["a", "b"], batch_size=batch_size, seed=3)


def adversarial(method: str, **changes) -> AdversarialTask:
    return AdversarialTask(task(), AdversarialConfig(method, **changes), seed=3)


def loss_at(model: SequenceClassifier, batch, delta: torch.Tensor | None) -> torch.Tensor:
    """The classification loss with `delta` added to the embeddings, through `inputs_embeds` (no hook)."""
    ids, lengths, labels = batch
    embeds = model.gpt.tok_emb(ids)
    if delta is not None:
        embeds = embeds + delta
    logits = model.head(model.pool(model.gpt.hidden_states(inputs_embeds=embeds), lengths))
    return F.cross_entropy(logits.float(), labels)


def embedding_grad(model, batch, delta=None) -> torch.Tensor:
    delta = torch.zeros(*batch[0].shape, model.config.n_embd) if delta is None else delta.clone()
    delta.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_at(model, batch, delta), delta)
    return grad


def padding(batch) -> torch.Tensor:
    ids, lengths, _ = batch
    return torch.arange(ids.shape[1]) >= lengths[:, None]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fgm_is_epsilon_times_the_normalised_gradient_of_each_example(norm):
    model, adv = classifier(), adversarial("fgm", adv_epsilon=0.3, adv_norm=norm)
    batch = adv.train_batch(0, 0, CPU)
    loss = adv.loss(model, batch)
    inner = batch.batch
    grad = embedding_grad(model, inner)
    real = (~padding(inner)).unsqueeze(-1).float()
    if norm == "l2":
        expected = 0.3 * grad * real / (grad * real).flatten(1).norm(dim=1)[:, None, None]
    else:
        expected = 0.3 * grad.sign() * real
    delta = adv.last_delta
    assert padding(inner).any(), "the batch should have padding"
    assert torch.allclose(delta, expected, atol=1e-6)
    assert torch.allclose(per_example_norm(delta, norm, ~padding(inner)), torch.full((4,), 0.3), atol=1e-5)
    assert delta[padding(inner)].abs().max() == 0
    # the objective: clean loss + loss at the perturbation
    assert loss.item() == pytest.approx((loss_at(model, inner, None) + loss_at(model, inner, expected)).item(), rel=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_stays_in_each_examples_ball_ignores_padding_and_raises_the_loss(norm):
    model = classifier()
    adv = adversarial("pgd", adv_epsilon=0.5, adv_steps=4, adv_alpha=0.4, adv_norm=norm, adv_weight=2.0,
                      adv_clean_weight=0.5)
    batch = adv.train_batch(1, 0, CPU)
    loss = adv.loss(model, batch)
    delta, inner = adv.last_delta, batch.batch
    norms = per_example_norm(delta, norm)
    assert (norms <= 0.5 * (1 + 1e-5)).all() and (norms >= 0.5 * 0.99).all(), norms  # big steps: on the boundary
    assert delta[padding(inner)].abs().max() == 0
    clean, attacked = loss_at(model, inner, None), loss_at(model, inner, delta)
    assert attacked > clean
    assert loss.item() == pytest.approx((0.5 * clean + 2.0 * attacked).item(), rel=1e-5)


def test_freelb_averages_the_gradient_over_its_ascent_steps():
    """With a zero start, FreeLB's parameter gradient is the mean of the gradients at δ0 = 0 and δ1 = Π(α·ĝ)."""
    model = classifier()
    adv = adversarial("freelb", adv_epsilon=0.4, adv_steps=2, adv_alpha=0.3, adv_random_start=False,
                      adv_clean_weight=0.0)
    batch = adv.train_batch(2, 0, CPU)
    inner, mask = batch.batch, ~padding(batch.batch)
    adv.loss(model, batch).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    delta1 = project(0.3 * ascent_direction(embedding_grad(model, inner), "l2", mask), 0.4, "l2", mask)
    expected = (loss_at(model, inner, None) + loss_at(model, inner, delta1)) / 2
    expected.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(got[name], p.grad, atol=1e-6), name
    assert not torch.allclose(got["head.weight"], torch.zeros_like(got["head.weight"]))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_random_start_lies_in_the_ball_off_the_padding_and_depends_only_on_the_generator(norm):
    mask = torch.arange(6) < torch.tensor([[2], [6], [4]])
    draw = lambda: random_start((3, 6, 5), 0.7, norm, mask, torch.Generator().manual_seed(9))
    a, b = draw(), draw()
    assert torch.equal(a, b)
    assert (per_example_norm(a, norm) <= 0.7 + 1e-6).all() and (per_example_norm(a, norm) > 0).all()
    assert a[~mask].abs().max() == 0


def test_causal_mask_keeps_the_positions_that_can_change_the_loss():
    y = torch.tensor([[5, -100, 7, -100, -100], [-100, 3, 4, 5, 6]])
    assert causal_perturbation_mask(y).tolist() == [[True, True, True, False, False], [True] * 5]


@pytest.mark.parametrize("changes,words", [
    (dict(adv_epsilon=-1.0), "--adv-epsilon"), (dict(adv_epsilon=math.nan), "--adv-epsilon"),
    (dict(adv_alpha=math.nan), "--adv-alpha"), (dict(adv_alpha=-0.1), "--adv-alpha"),
    (dict(adv_steps=0), "--adv-steps"), (dict(adv_norm="l1"), "--adv-norm"), (dict(adversarial="pgdx"), "--adversarial"),
    (dict(adv_weight=math.inf), "--adv-weight"), (dict(adv_weight=0.0, adv_clean_weight=0.0), "both 0")])
def test_bad_settings_are_refused_with_the_flag_named(changes, words):
    with pytest.raises(GptkitError, match=words):
        AdversarialConfig(**{"adversarial": "pgd", **changes}).validate()


def test_recipe_keys_set_the_adversarial_flags_at_the_top_level_or_under_adv(tmp_path):
    from gptkit.cli.recipes import finetune_defaults, pretrain_defaults

    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text("adversarial: pgd\nadv_epsilon: 0.25\nmax_iters: 7\n")
    nested.write_text("adv:\n  adversarial: freelb\n  adv-steps: 4\n")
    assert finetune_defaults(["--config", str(flat)]).adv == AdversarialConfig("pgd", adv_epsilon=0.25)
    assert finetune_defaults(["--config", str(nested)]).adv == AdversarialConfig("freelb", adv_steps=4)
    defaults, _ = pretrain_defaults(["--config", str(flat)])
    assert defaults.adv.adversarial == "pgd" and defaults.train.max_iters == 7


def test_compile_is_refused():
    with pytest.raises(GptkitError, match="--compile"):
        AdversarialConfig("fgm").validate(compile=True)


class Crash:
    """A hook that kills the run (raises) after an optimizer step, as SIGKILL would: what is on disk is what's left."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_optimizer_step(self, step: int) -> None:
        if step + 1 == self.at:
            raise RuntimeError("killed")


def test_pretraining_with_pgd_resumes_exactly_after_a_kill(tmp_path, prepared_char):
    dataset = TokenDataset(prepared_char)
    config = ModelConfig(vocab_size=dataset.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16, dropout=0.1)
    lm = CausalLMTask(dataset, block_size=64, batch_size=8, seed=5, eval_iters=2)
    cfg = TrainConfig(max_iters=8, batch_size=8, eval_interval=4, warmup_iters=2, log_interval=1, seed=5,
                      device="cpu")
    adv = AdversarialTask(lm, AdversarialConfig("pgd", adv_epsilon=0.5, adv_steps=2), seed=5)

    def model() -> GPT:
        torch.manual_seed(0)
        return GPT(config)

    straight = model()
    train(straight, adv, cfg, tokenizer=dataset.tokenizer, run_dir=tmp_path / "straight", quiet=True)
    with pytest.raises(RuntimeError, match="killed"):
        train(model(), adv, cfg, tokenizer=dataset.tokenizer, run_dir=tmp_path / "killed", quiet=True,
              hooks=[Crash(at=6)])  # the last checkpoint is step 4's
    resumed = model()
    train(resumed, adv, cfg, tokenizer=dataset.tokenizer, run_dir=tmp_path / "killed", resume=True, quiet=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    logs = [[json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("straight", "killed")]
    losses = [{r["step"]: r["train_loss"] for r in log if "train_loss" in r} for log in logs]
    assert losses[0] == losses[1] and sorted(losses[0]) == list(range(1, 9))  # steps 5..8 relogged, the same


# ------------------------------------------------------------------------------------------------
# through the fine-tuning job and the CLI

WORDS = {"pos": ["good", "great", "fine"], "neg": ["bad", "awful", "poor"]}
FILLER = ["the", "film", "was", "a", "plot", "and", "very"]


@pytest.fixture(scope="module")
def base_and_data(tmp_path_factory) -> tuple[Path, Path]:
    import random

    workdir = tmp_path_factory.mktemp("adversarial")
    rng = random.Random(0)
    rows = []
    for i in range(120):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(FILLER, 4)
        words.insert(rng.randrange(5), rng.choice(WORDS[label]))
        rows.append(f"{' '.join(words)},{label}")
    data = workdir / "reviews.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    tokenizer = Tokenizer.train_bpe([data.read_text()], 300)
    torch.manual_seed(0)
    gpt = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    return save_checkpoint(workdir / "base", gpt, tokenizer), data


@pytest.mark.parametrize("method,adv", [("full", "fgm"), ("lora", "pgd"), ("adapter", "freelb")])
def test_every_fine_tuning_method_trains_adversarially(base_and_data, tmp_path, method, adv):
    base, data = base_and_data
    args = FinetuneArgs(checkpoint=base, data=str(data), out=tmp_path / "run", peft=PeftConfig(method=method),
                        adv=AdversarialConfig(adv, adv_epsilon=0.5, adv_steps=2), quiet=True)
    args.train = dataclasses.replace(args.train, max_iters=6, eval_interval=3, warmup_iters=1)
    summary = run_finetune(args)["run"]
    assert summary["steps"] == 6 and 0 <= summary["test"]["accuracy"] <= 1
    saved = json.loads((tmp_path / "run" / "best" / "train_config.json").read_text())
    assert saved["adversarial"]["adversarial"] == adv


def test_finetune_classify_with_pgd_through_the_cli(base_and_data, tmp_path, run_cli):
    base, data = base_and_data
    out = tmp_path / "cli"
    proc = run_cli("finetune", "--checkpoint", str(base), "--data", str(data), "--task", "classify",
                   "--method", "lora", "--adversarial", "pgd", "--adv-epsilon", "0.5", "--adv-steps", "2",
                   "--adv-norm", "linf", "--max-iters", "4", "--eval-interval", "2", "--warmup-iters", "1",
                   "--out", str(out), "--quiet")
    assert "test accuracy" in proc.stdout
    assert json.loads((out / "last" / "train_config.json").read_text())["adversarial"]["adv_norm"] == "linf"
    bad = run_cli("finetune", "--checkpoint", str(base), "--data", str(data), "--adversarial", "fgm",
                  "--adv-epsilon", "nan", "--out", str(tmp_path / "bad"), check=False)
    assert bad.returncode == 2 and "--adv-epsilon" in bad.stderr and "Traceback" not in bad.stderr


def test_pretrain_with_freelb_through_the_cli(tmp_path, prepared_char, run_cli, small_model_flags):
    out = tmp_path / "pre"
    run_cli("pretrain", "--data", str(prepared_char), "--out", str(out), "--max-iters", "4", "--eval-interval", "2",
            "--eval-iters", "2", "--adversarial", "freelb", "--adv-steps", "2", *small_model_flags)
    assert json.loads((out / "last" / "train_config.json").read_text())["adversarial"]["adversarial"] == "freelb"


@pytest.mark.slow
def test_pgd_under_torchrun_matches_one_process(tmp_path, prepared_char, small_model_flags):
    """Per-example budgets do not depend on the batch, so two processes of 4 train as one process of 8."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    at = small_model_flags.index("--batch-size")
    flags = ["pretrain", "--data", str(prepared_char), *small_model_flags[:at], *small_model_flags[at + 2:],
             "--max-iters", "8", "--lr-decay-iters", "8", "--warmup-iters", "2", "--learning-rate", "1e-2",
             "--eval-interval", "4", "--eval-iters", "3", "--log-interval", "1", "--grad-accum-steps", "2",
             "--adversarial", "pgd", "--adv-steps", "2", "--no-adv-random-start"]  # random starts are drawn per rank
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = [sys.executable, "-m", "gptkit", *flags, "--batch-size", "8", "--out", str(tmp_path / "one")]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gptkit",
           *flags, "--batch-size", "4", "--out", str(tmp_path / "two")]
    for command in (single, ddp):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [[json.loads(line)["train_loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()
               if "train_loss" in line] for run in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    a, b = (load_file(str(tmp_path / run / "last" / "model.safetensors")) for run in ("one", "two"))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
