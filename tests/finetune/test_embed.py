"""Embedding fine-tuning (`gptkit finetune --task embed`): pairs, the contrastive task's metrics, learning through the
one loop with full weights and LoRA, the text style recorded and applied by `LLM.embed`, and bad input."""

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from gptkit.adapt.peft import PeftConfig
from gptkit.api import LLM
from gptkit.checkpoint import save_checkpoint
from gptkit.config import ModelConfig
from gptkit.data.pairs import read_pairs, split_pairs
from gptkit.errors import GptkitError
from gptkit.finetune.job import FinetuneArgs, run_finetune
from gptkit.models.gpt import GPT
from gptkit.tokenizer import Tokenizer
from gptkit.training.tasks import AdversarialConfig
from gptkit.training.tasks.embed import retrieval_metrics

# Two disjoint vocabularies paired at random: nothing in a query's tokens says which positive is its own, so only
# training can align them (the base model's embeddings cannot).
LEFT = ["apple", "river", "stone", "cloud", "table", "horse", "window", "garden", "candle", "mirror", "bridge",
        "forest", "pillow", "rocket", "violin", "pepper", "saddle", "marble", "tunnel", "basket"]
RIGHT = ["north", "seven", "quiet", "purple", "eleven", "frozen", "hollow", "bright", "twelve", "yellow", "gentle",
         "narrow", "thirty", "silver", "sudden", "hungry", "eighty", "golden", "fourth", "little"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embed")


@pytest.fixture(scope="module")
def pairs_file(workdir) -> Path:
    partners = RIGHT[:]
    random.Random(0).shuffle(partners)
    path = workdir / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": a, "positive": b}) + "\n" for a, b in zip(LEFT, partners)))
    return path


@pytest.fixture(scope="module")
def base(workdir) -> Path:
    text = " ".join(LEFT + RIGHT) + " hello world , ! Hello World"
    tokenizer = Tokenizer.train_bpe([text * 3], 300)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32))
    return save_checkpoint(workdir / "base", model, tokenizer)


def embed_args(base: Path, data, out: Path, *, method: str = "full", iters: int = 80, lr: float = 3e-3,
               **changes) -> FinetuneArgs:
    args = FinetuneArgs(checkpoint=base, data=str(data), out=out, task="embed", peft=PeftConfig(method=method),
                        quiet=True, val_fraction=0.2, **changes)
    args.train = dataclasses.replace(args.train, max_iters=iters, eval_interval=max(iters // 4, 1), warmup_iters=5,
                                     batch_size=8, learning_rate=lr)
    return args


def recall_at_1(llm: LLM, queries: list[str], positives: list[str]) -> float:
    return retrieval_metrics(llm.embed(queries), llm.embed(positives))["recall_at_1"]


def test_retrieval_metrics_rank_each_query_among_all_positives():
    positives = torch.eye(3)
    # query 0 is nearest its own positive; query 1 is nearer positive 0 than its own; query 2 nearest its own
    queries = torch.tensor([[1.0, 0.1, 0.0], [0.9, 0.5, 0.0], [0.0, 0.0, 1.0]])
    metrics = retrieval_metrics(queries, positives)
    assert metrics["recall_at_1"] == pytest.approx(2 / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert metrics["recall_at_5"] == 1.0


def test_collapsed_embeddings_rank_last_not_first():
    same = torch.ones(4, 8) / 8 ** 0.5  # every vector equal: ties must not count as a hit
    metrics = retrieval_metrics(same, same)
    assert metrics["recall_at_1"] == 0.0
    assert metrics["mrr"] == pytest.approx(1 / 4)


def test_contrastive_training_aligns_pairs_the_base_cannot(base, pairs_file, workdir):
    args = embed_args(base, pairs_file, workdir / "full")
    summary = run_finetune(args)["run"]
    pairs = read_pairs(pairs_file)
    train, _ = split_pairs(pairs, val_fraction=0.2, seed=0)
    before = recall_at_1(LLM.load(base), train.queries, train.positives)
    after = recall_at_1(LLM.load(args.out), train.queries, train.positives)
    assert after >= 0.8 and after >= before + 0.4, (before, after)
    # the loop kept the checkpoint with the best validation MRR, and the report holds both sides of the control
    logged = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
    assert summary["best_val_mrr"] == pytest.approx(max(r["val_mrr"] for r in logged if "val_mrr" in r))
    assert set(summary["base"]) == set(summary["final"]) >= {"val_recall_at_1", "val_mrr", "val_loss"}
    assert summary["train_pairs"] + summary["val_pairs"] == len(LEFT)


def test_lora_embedder_records_its_style_and_embeds_in_it(base, pairs_file, workdir):
    args = embed_args(base, pairs_file, workdir / "lora", method="lora", iters=8, lr=1e-2, text_style="english_mix")
    run_finetune(args)
    spec = json.loads((args.out / "best" / "finetune.json").read_text())
    assert (spec["task"], spec["pooling"], spec["text_style"]) == ("embed", "mean", "english_mix")
    assert (args.out / "best" / "adapter").is_dir()
    tuned, plain = LLM.load(args.out), LLM.load(base)
    assert tuned.embedding_style.text_style == "english_mix"
    a, b = tuned.embed(["Hello, World!", "hello , world !"])
    assert torch.allclose(a, b)  # the style is applied before tokenising
    a, b = plain.embed(["Hello, World!", "hello , world !"])
    assert not torch.allclose(a, b)  # ... and only for the checkpoint that was trained with it
    # LoRA changed the model: its embeddings differ from the base's
    assert not torch.allclose(tuned.embed(LEFT[:4]), plain.embed(LEFT[:4]))


def test_pairs_from_bundled_sets_chat_rows_and_field_aliases(tmp_path):
    jargon = read_pairs("jargon")
    assert len(jargon) > 800 and len(set(zip(jargon.queries, jargon.positives))) == len(jargon)
    assert all(q.strip() and p.strip() for q, p in zip(jargon.queries, jargon.positives))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                                             {"role": "user", "content": "why"},
                                             {"role": "assistant", "content": "because"}]}) + "\n")
    assert read_pairs(chat).queries == ["hi", "why"] and read_pairs(chat).positives == ["yo", "because"]
    aliases = tmp_path / "qa.jsonl"
    rows = [{"question": "q", "answer": "a"}, {"term": "t", "definition": "d"}, {"question": "q", "answer": "again"},
            {"text_a": "q", "text_b": "a"}]
    aliases.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = read_pairs(aliases)
    assert pairs.queries == ["q", "t", "q"] and pairs.positives == ["a", "d", "again"]  # a repeated pair: kept once


@pytest.mark.parametrize("rows,message", [
    ([{"query": "a", "positive": "b"}, {"text": "c"}], "line 2"),
    ([{"query": "a", "positive": ""}], "non-empty strings"),
    ([{"query": 3, "positive": "b"}], "non-empty strings"),
])
def test_malformed_pair_files_name_the_problem(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(GptkitError, match=message):
        read_pairs(path)


def test_unknown_pair_set_and_too_few_pairs(tmp_path):
    with pytest.raises(GptkitError, match="neither a file nor a bundled pair set"):
        read_pairs("no-such-set")
    path = tmp_path / "few.jsonl"
    path.write_text(json.dumps({"query": "a", "positive": "b"}) + "\n")
    with pytest.raises(GptkitError, match="at least 4 distinct pairs"):
        split_pairs(read_pairs(path), val_fraction=0.5, seed=0)


@pytest.mark.parametrize("changes,message", [
    ({"temperature": 0.0}, "--temperature"),
    ({"merge": True}, "--merge"),
    ({"adv": AdversarialConfig(adversarial="fgm")}, "--adversarial applies to"),
])
def test_bad_embed_settings_are_refused(base, pairs_file, workdir, changes, message):
    with pytest.raises(GptkitError, match=message):
        run_finetune(embed_args(base, pairs_file, workdir / "bad", **changes))


def test_a_batch_of_one_has_no_negatives(base, pairs_file, workdir):
    args = embed_args(base, pairs_file, workdir / "bad-batch")
    args.train = dataclasses.replace(args.train, batch_size=1)
    with pytest.raises(GptkitError, match="at least 2"):
        run_finetune(args)
