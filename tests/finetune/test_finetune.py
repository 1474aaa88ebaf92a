"""Fine-tuning end to end: classification, SFT and LM tasks with every method, through the one loop."""

import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptkit.api import LLM
from gptkit.checkpoint import load_model, save_checkpoint
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.finetune.job import FinetuneArgs, run_finetune
from gptkit.finetune.spec import load_finetuned, load_language_model
from gptkit.models.gpt import GPT
from gptkit.adapt.peft import PeftConfig
from gptkit.tokenizer import Tokenizer
from gptkit.training.tasks import SFTTask


POSITIVE = ["good", "great", "lovely", "superb", "fine", "happy"]
NEGATIVE = ["bad", "awful", "poor", "ugly", "dull", "sad"]
FILLER = ["the", "film", "was", "a", "plot", "story", "of", "and", "actor", "scene", "very", "quite"]


def synthetic_reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Filler sentences with one sentiment word: trivially separable, so a working fine-tune must learn it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, 5)
        words.insert(rng.randrange(6), rng.choice(POSITIVE if label == "pos" else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def reviews_csv(workdir) -> Path:
    path = workdir / "reviews.csv"
    lines = ["text,label"] + [f"{t},{label}" for t, label in synthetic_reviews(400)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def base(workdir, reviews_csv) -> Path:
    """A small random GPT with a BPE tokenizer (chat tokens reserved), saved as a checkpoint.

    BPE, because a random model this small cannot learn to spot words spelled out in characters from a
    few hundred examples; with a token per word it is a fair test of the machinery."""
    text = reviews_csv.read_text() + "What does it mean? It means a thing.\n"
    tokenizer = Tokenizer.train_bpe([text], 400)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    return save_checkpoint(workdir / "base", model, tokenizer)


def args_for(base: Path, data, out: Path, *, method: str = "lora", task: str = "classify", iters: int = 60,
             **changes) -> FinetuneArgs:
    args = FinetuneArgs(checkpoint=base, data=str(data), out=out, task=task, peft=PeftConfig(method=method),
                        quiet=True, **changes)
    args.train = dataclasses.replace(args.train, max_iters=iters, eval_interval=max(iters // 3, 1), warmup_iters=5)
    return args


@pytest.mark.parametrize("method,pooling,lr", [("full", "last", 3e-3), ("lora", "last", 1e-2), ("full", "mean", 3e-3)])
def test_classifier_learns_a_separable_task(base, reviews_csv, workdir, method, pooling, lr):
    args = args_for(base, reviews_csv, workdir / f"learn-{method}-{pooling}", method=method, iters=100,
                    pooling=pooling)
    args.train = dataclasses.replace(args.train, learning_rate=lr)
    summary = run_finetune(args)["run"]
    assert summary["test"]["accuracy"] >= 0.85, summary["test"]
    report = json.loads((args.out / "report.json").read_text())
    assert report["run"]["test"]["confusion_matrix"] == summary["test"]["confusion_matrix"]
    # the best checkpoint is the one with the best validation macro-F1 (what the loop logged)
    logged = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
    f1s = [r["val_macro_f1"] for r in logged if "val_macro_f1" in r]
    assert summary["best_val_macro_f1"] == pytest.approx(max(f1s))


def test_auxiliary_lm_loss_is_classification_plus_weighted_next_token_loss(base):
    """GPT-1's objective: CE(labels) + w * mean next-token CE over each row's real tokens, padding excluded."""
    from gptkit.models.heads import SequenceClassifier, pad_batch
    from gptkit.training.tasks import ClassificationTask

    gpt, _ = load_model(base)
    classifier = SequenceClassifier(gpt, ["neg", "pos"], "mean")
    rows, labels = [[5, 9, 2, 7, 3], [4, 8], [6, 1, 1, 2]], torch.tensor([0, 1, 1])
    ids, lengths = pad_batch(rows)
    task = lambda w: ClassificationTask(rows, labels.tolist(), rows, labels.tolist(), ["neg", "pos"],  # noqa: E731
                                        batch_size=3, lm_weight=w)
    with torch.no_grad():
        plain = task(0.0).loss(classifier, (ids, lengths, labels))
        mixed = task(0.5).loss(classifier, (ids, lengths, labels))
        token_losses = torch.cat([torch.nn.functional.cross_entropy(gpt(torch.tensor([r[:-1]]))[0], torch.tensor(r[1:]),
                                                                    reduction="none") for r in rows])
    expected_lm = token_losses.mean()
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(classifier(ids, lengths), labels))
    torch.testing.assert_close(mixed, plain + 0.5 * expected_lm, rtol=1e-5, atol=1e-5)


def test_lm_weight_fine_tune_learns_and_is_validated(base, reviews_csv, workdir):
    args = args_for(base, reviews_csv, workdir / "lm-weight", method="full", iters=100, lm_weight=0.5)
    args.train = dataclasses.replace(args.train, learning_rate=3e-3)
    assert run_finetune(args)["run"]["test"]["accuracy"] >= 0.85
    for bad, match in [(dict(lm_weight=-1.0), "lm-weight"), (dict(lm_weight=float("nan")), "lm-weight"),
                       (dict(lm_weight=0.5, task="sft"), "classify only")]:
        with pytest.raises(GptkitError, match=match):
            run_finetune(args_for(base, reviews_csv, workdir / "lm-weight-bad", **bad))


def test_model_dropout_is_on_in_training_only(base, reviews_csv, workdir):
    from gptkit.finetune.job import set_dropout

    gpt, _ = load_model(base)
    ids = torch.randint(0, gpt.config.vocab_size, (2, 12))
    gpt.eval()
    before = gpt(ids)
    set_dropout(gpt, 0.3)
    torch.testing.assert_close(gpt(ids), before)  # eval: no dropout, same outputs as the base
    gpt.train()
    torch.manual_seed(0)
    first = gpt(ids)
    assert not torch.allclose(first, gpt(ids))  # training: a fresh mask on every pass
    with pytest.raises(GptkitError, match="model-dropout"):
        run_finetune(args_for(base, reviews_csv, workdir / "dropout-bad", model_dropout=1.0))


@pytest.mark.parametrize("method", ["lora", "adapter", "adalora", "freeze", "full"])
def test_every_method_saves_loads_and_classifies(base, reviews_csv, workdir, method):
    out = workdir / f"method-{method}"
    summary = run_finetune(args_for(base, reviews_csv, out, method=method, iters=12))["run"]
    trainable, total = summary["trainable_parameters"], summary["total_parameters"]
    assert 0 < trainable <= total and (trainable == total) == (method == "full")
    best = out / "best"
    if method in ("lora", "adapter", "adalora"):
        assert (best / "adapter" / "adapter_model.safetensors").is_file() and not (best / "model.safetensors").exists()
        assert (best / "adapter" / "adapter_model.safetensors").stat().st_size < 200_000
    else:
        assert (best / "model.safetensors").is_file()
    llm = LLM.load(out)
    texts = ["the film was good", "the plot was awful"]
    predictions = llm.classify(texts)
    assert [set(p.probs) for p in predictions] == [{"neg", "pos"}] * 2
    assert all(abs(sum(p.probs.values()) - 1) < 1e-5 and p.label == max(p.probs, key=p.probs.get)
               for p in predictions)
    # the same head and weights reached another way: base + adapter, or the finetuned model itself
    if method in ("lora", "adapter", "adalora"):
        again = LLM.load(base, adapter=out).classify(texts)
        for a, b in zip(predictions, again):
            assert a.probs == pytest.approx(b.probs, abs=1e-5)
    # the test-split figures in the report are what the saved model predicts
    model, tokenizer = load_finetuned(best)
    assert model.classifier is not None and model.classifier.labels == ["neg", "pos"]


def test_finetune_resumes_exactly_after_a_kill(base, reviews_csv, workdir, run_cli):
    """Kill -9 after the first checkpoint, resume: the adapter and head equal an uninterrupted run's."""
    flags = ["finetune", "--checkpoint", str(base), "--data", str(reviews_csv), "--max-iters", "40",
             "--eval-interval", "10", "--warmup-iters", "5", "--quiet"]
    straight = workdir / "resume-straight"
    run_cli(*flags, "--out", str(straight))
    killed = workdir / "resume-killed"
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", *flags, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(killed / "last" / "training_state.pt", weights_only=True) if (killed / "last").exists() else None
    if state is None or state["step"] >= 40:
        pytest.skip("the run finished before it could be killed mid-way")
    run_cli(*flags, "--out", str(killed), "--resume")
    for name in ("adapter/adapter_model.safetensors", "head.safetensors"):
        from safetensors.torch import load_file

        a, b = load_file(str(straight / "last" / name)), load_file(str(killed / "last" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_sft_masks_everything_but_the_assistant():
    user, reply = [1, 2, 3], [4, 5]
    ids, mask = user + reply, [False] * 3 + [True] * 2
    task = SFTTask([(ids, mask)], [(ids, mask)], block_size=8, batch_size=2, pad_id=0)
    x, y = task._rows([(ids, mask), (ids, mask)])
    # both conversations fit one row of block_size + 1 = 9 tokens? 5 + 5 = 10 > 9, so two rows
    assert x.shape == (2, 8)
    assert x[0, :4].tolist() == ids[:-1] and y[0, :4].tolist() == [-100, -100, 4, 5]
    assert (y[0, 4:] == -100).all()


def test_sft_trains_merges_and_generates(base, workdir, run_cli):
    conversations = workdir / "chat.jsonl"
    rows = [{"prompt": f"What does {w} mean?", "response": f"It means {w}."} for w in POSITIVE + NEGATIVE] * 3
    conversations.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = workdir / "sft"
    args = args_for(base, conversations, out, task="sft", iters=30, merge=True)
    summary = run_finetune(args)["run"]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in logged if "val_loss" in r]
    assert val[-1] < val[0], val  # it learned something about the replies
    # the adapter checkpoint and the merged one are the same language model
    adapter_model, tokenizer = load_language_model(out)
    merged_model, _ = load_language_model(out / "merged")
    ids = torch.tensor([tokenizer.encode("What does good mean?")])
    with torch.no_grad():
        torch.testing.assert_close(adapter_model(ids), merged_model(ids), atol=1e-5, rtol=1e-5)
    assert summary["merged"] == str(out / "merged")
    result = run_cli("generate", "--checkpoint", str(out), "--prompt", "What", "--max-tokens", "5",
                     "--temperature", "0", "--no-stream")
    assert result.stdout.startswith("What")


def test_lm_continued_pretraining_on_text(base, workdir, reviews_csv):
    text = workdir / "more.txt"
    text.write_text(" ".join(t for t, _ in synthetic_reviews(300, seed=1)) + "\n")
    out = workdir / "lm"
    args = args_for(base, text, out, task="lm", method="lora", iters=30)
    args.train = dataclasses.replace(args.train, learning_rate=1e-2)
    summary = run_finetune(args)["run"]
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    first_val = next(r["val_loss"] for r in logged if "val_loss" in r)
    assert summary["best_val_loss"] < first_val and (out / "best" / "adapter").is_dir()
    llm = LLM.load(out)
    assert isinstance(llm.generate("the", max_tokens=4, temperature=0)[0], str)


def test_self_training_reports_both_runs(base, reviews_csv, workdir):
    out = workdir / "self-train"
    args = args_for(base, reviews_csv, out, method="full", iters=30, self_train=True, labelled_fraction=0.2,
                    confidence=0.5)
    summary = run_finetune(args)
    assert summary["baseline"]["train_rows"] < summary["self_trained"]["train_rows"]
    assert summary["self_trained"]["train_rows"] == summary["baseline"]["train_rows"] + summary["pseudo_labelled"]
    assert 0 <= summary["pseudo_label_accuracy"] <= 1
    assert (out / "baseline" / "best").is_dir() and (out / "best").is_dir()


def test_prompting_classifier_through_the_cli(base, reviews_csv, workdir, run_cli):
    report = workdir / "zero-shot.json"
    result = run_cli("classify", "--checkpoint", str(base), "--data", str(reviews_csv), "--limit", "10",
                     "--template", "{text} => {label}", "--calibrate", "--report", str(report))
    data = json.loads(report.read_text())
    assert data["support"] == 10 and "macro avg" in result.stdout
    texts = run_cli("classify", "--checkpoint", str(base), "--text", "good film", "--labels", "pos", "neg")
    line = json.loads(texts.stdout.strip())
    assert line["label"] in ("pos", "neg") and sum(line["probs"].values()) == pytest.approx(1.0)


# --- bad input ------------------------------------------------------------------------------------

def test_missing_column_names_the_available_ones(base, reviews_csv, workdir, run_cli):
    result = run_cli("finetune", "--checkpoint", str(base), "--data", str(reviews_csv), "--text-column", "review",
                     "--out", str(workdir / "bad-col"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "review" in result.stderr and "text" in result.stderr and "label" in result.stderr


def test_label_only_in_test_is_refused(base, reviews_csv, workdir):
    test = workdir / "test-with-rare.csv"
    test.write_text("text,label\nthe film was good,pos\nan odd one,rare\n")
    with pytest.raises(GptkitError, match="'rare' appears in the test split but never in training"):
        run_finetune(args_for(base, reviews_csv, workdir / "rare", test_data=str(test)))


def test_lora_targets_that_match_nothing(base, reviews_csv, workdir, run_cli):
    result = run_cli("finetune", "--checkpoint", str(base), "--data", str(reviews_csv), "--targets", "attention",
                     "--out", str(workdir / "bad-target"), check=False)
    assert result.returncode == 2 and "attention" in result.stderr and "q" in result.stderr


def test_adapter_on_a_different_base_says_which_base_it_expects(base, reviews_csv, workdir):
    out = workdir / "method-lora"
    if not (out / "best").exists():
        run_finetune(args_for(base, reviews_csv, out, iters=5))
    tokenizer = Tokenizer.from_file(base / "tokenizer.json")
    torch.manual_seed(1)  # same shape, other weights
    other = save_checkpoint(workdir / "other-base", GPT(ModelConfig.load(base / "config.json")), tokenizer)
    with pytest.raises(GptkitError, match="different base|weights differ"):
        LLM.load(other, adapter=out)
    with pytest.raises(GptkitError, match="base checkpoint"):
        load_finetuned(out / "best", base=workdir / "nowhere")


def test_classification_checkpoint_is_not_a_text_generator(reviews_csv, workdir, base, run_cli):
    out = workdir / "method-full"
    if not (out / "best").exists():
        run_finetune(args_for(base, reviews_csv, out, method="full", iters=5))
    result = run_cli("generate", "--checkpoint", str(out), "--prompt", "hi", check=False)
    assert result.returncode == 2 and "classification" in result.stderr


def test_existing_run_needs_resume_or_overwrite(base, reviews_csv, workdir):
    out = workdir / "method-full"
    if not (out / "best").exists():
        run_finetune(args_for(base, reviews_csv, out, method="full", iters=5))
    with pytest.raises(GptkitError, match="--resume"):
        run_finetune(args_for(base, reviews_csv, out, method="full", iters=5))


def test_recipe_yaml_sets_method_and_training_flags(base, reviews_csv, workdir, run_cli):
    recipe = workdir / "lora.yaml"
    recipe.write_text("method: lora\nrank: 2\ntargets: [q, k, v, o]\nmax_iters: 6\neval_interval: 3\n"
                      "train:\n  learning_rate: 0.005\n")
    out = workdir / "recipe"
    run_cli("finetune", "--config", str(recipe), "--checkpoint", str(base), "--data", str(reviews_csv),
            "--out", str(out), "--rank", "3", "--quiet")  # a flag beats the recipe
    adapter = json.loads((out / "best" / "adapter" / "adapter_config.json").read_text())["peft"]
    assert adapter["rank"] == 3 and adapter["targets"] == ["q", "k", "v", "o"]
    trained = json.loads((out / "last" / "train_config.json").read_text())["train"]
    assert trained["max_iters"] == 6 and trained["learning_rate"] == 0.005
