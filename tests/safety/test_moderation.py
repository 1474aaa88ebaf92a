"""Moderation: the word-list rules through obfuscation (and not inside innocent words), results, awkward input, the
learned part (a stand-in classifier, and a real tiny moderator checkpoint through `LLM.load`), output moderation while
text grows, the data filter, system prompts, and the detection metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptkit.adapt.peft import PeftConfig
from gptkit.api import LLM, load_moderator
from gptkit.checkpoint import save_checkpoint
from gptkit.config import ModelConfig
from gptkit.data.labelled import bundled_labelled
from gptkit.data.moderation_data import (CATEGORIES, LABELS, identity_blind, moderation_splits,
                                         read_benign, read_benign_prose, text_style)
from gptkit.errors import GptkitError
from gptkit.evaluation.detection import calibrate_threshold, flag_report, roc_auc
from gptkit.finetune.job import FinetuneArgs, run_finetune
from gptkit.finetune.moderation import ModerationSpec
from gptkit.inference.text import IncrementalText
from gptkit.models.gpt import GPT
from gptkit.safety.moderation import MAX_PENDING_CHARS, LearnedClassifier, Moderator, Rules, chunks
from gptkit.safety.policy import DataFilter, RequestGuard, moderate_file, read_system_prompt
from gptkit.tokenizer import Tokenizer

FLAGGED = {  # text -> the list entry it must be found as
    "what the fuck": "fuck", "WHAT THE FUCK": "fuck", "FuCk this": "fuck",
    "fuuuuuck": "fuck", "shiiiit happens": "shit",
    "f.u.c.k": "fuck", "f u c k off": "fuck", "f-u-c-k": "fuck", "f_u_c_k": "fuck", "f*u*c*k": "fuck", "fu-ck": "fuck",
    "sh1t": "shit", "5hit": "shit", "$hit": "shit", "sh!t": "shit", "a$$hole": "asshole", "@ss": "ass",
    "b1tch": "bitch", "c0ck": "cock", "wh0re": "whore", "7wat": "twat",
    "blow job": "blow job", "blowjob": "blow job", "blow-job": "blow job",
    "(shit)": "shit", "shit!": "shit", "\"fuck\"": "fuck",
}
INNOCENT = [  # every one holds a listed word inside a longer word (the Scunthorpe problem), or is plain English
    "Scunthorpe", "Penistone", "an assistant", "a classic cocktail", "the therapist in Essex", "Middlesex and Sussex",
    "psychoanalysis", "grapes", "a shell", "hello", "assume", "bass guitar", "passage", "Dickens", "scrapbook",
    "arsenal", "pussycat", "shiitake", "butterfly", "cockpit", "titanic", "Matsushita", "hancock", "cumulative",
    "God bless you", "go to hell", "kill the process", "Fanny Price", "I sob", "my gay friend", "a queer fish",
    "Galaxy A55", "455 people", "Chapter XXX", "fagged out", "spick and span", "the naked truth", "",
]


@pytest.fixture(scope="module")
def moderator() -> Moderator:
    return Moderator()


@pytest.mark.parametrize("text,word", FLAGGED.items())
def test_obfuscated_words_are_found(moderator, text, word):
    result = moderator.moderate(text)[0]
    assert result.flagged and result.score == 1.0, text
    assert result.matches[0].word == word
    match = result.matches[0]
    assert text[match.start:match.end] == match.text


@pytest.mark.parametrize("text", INNOCENT)
def test_words_inside_words_and_ordinary_words_are_not_flagged(moderator, text):
    result = moderator.moderate(text)[0]
    assert not result.flagged and result.matches == [] and result.score == 0.0, (text, result.matches)


def test_a_result_has_openai_shaped_categories_only_for_what_the_rules_know(moderator):
    result = moderator.moderate(["you nigger", "a blowjob", "oh shit", "fine"])
    assert [r.flagged for r in result] == [True, True, True, False]
    assert [[c for c, on in r.categories.items() if on] for r in result] == [["hate"], ["sexual"], ["vulgarity"], []]
    assert set(result[0].categories) == set(result[0].category_scores) == {"sexual", "hate", "vulgarity"}
    assert result[0].category_scores["hate"] == 1.0 and result[0].learned is None
    as_dict = result[2].to_dict()
    assert json.loads(json.dumps(as_dict))["matches"][0]["word"] == "shit"


def test_custom_word_lists_and_exclusions():
    rules = Rules(words=["darn", "heck it"], categories={"darn": "vulgarity"})
    moderator = Moderator(rules=rules)
    assert moderator.moderate("d4rn, heckit")[0].matches[1].word == "heck it"
    assert not moderator.moderate("darning")[0].flagged
    with pytest.raises(GptkitError, match="every word of the list is excluded"):
        Rules(words=["darn"], exclude=["darn"])


def test_empty_long_and_undecodable_input(moderator):
    assert not moderator.moderate("")[0].flagged and not moderator.moderate("   \n")[0].flagged
    long = ("All work and no play makes Jack a dull boy. " * 20_000) + "shit"  # ~880 KB
    result = moderator.moderate(long)[0]
    assert result.flagged and result.matches[0].start == len(long) - 4
    # Bytes are decoded as UTF-8 with replacement characters, never an error; a replaced byte hides nothing.
    result = moderator.moderate([b"clean \xff text", b"sh\xffit", "lone \ud800 surrogate"])
    assert [r.flagged for r in result] == [False, True, False]
    with pytest.raises(GptkitError, match="moderation input must be text"):
        moderator.moderate([42])


# --- the learned part ---------------------------------------------------------------------------------------

def fake_predict(texts):
    """A stand-in classifier: "banana" is sexual, "grumble" violent, anything else fine."""
    out = []
    for text in texts:
        p = {"none": 0.9, "sexual": 0.05, "violence": 0.05}
        if "banana" in text:
            p = {"none": 0.1, "sexual": 0.85, "violence": 0.05}
        elif "grumble" in text:
            p = {"none": 0.3, "sexual": 0.1, "violence": 0.6}
        out.append(p)
    return out


def test_the_learned_part_reports_only_the_categories_it_was_trained_on():
    calls = []

    def predict(texts):
        calls.append(list(texts))
        return fake_predict(texts)

    learned = LearnedClassifier(predict, ["none", "sexual", "violence"], threshold=0.5, chunk_chars=50)
    moderator = Moderator(learned=learned)
    assert moderator.categories == ("sexual", "hate", "vulgarity", "violence")  # the rules' and the classifier's
    banana, grumble, fine, empty = moderator.moderate(["a banana split", "they grumble", "a fine day", ""])
    assert banana.flagged and banana.categories["sexual"] and not banana.categories["violence"]
    assert banana.category_scores["sexual"] == pytest.approx(0.85) and banana.score == pytest.approx(0.9)
    assert grumble.flagged and [c for c, on in grumble.categories.items() if on] == ["violence"]
    assert not fine.flagged and fine.learned == pytest.approx(0.1)
    assert not empty.flagged and empty.learned == 0.0
    assert calls == [["a banana split", "they grumble", "a fine day"]]  # blank text never reaches the model
    only_learned = Moderator(rules=False, learned=learned)
    assert only_learned.categories == ("sexual", "violence")
    assert "hate" not in only_learned.moderate("shit")[0].categories  # nothing was trained on hate
    # Long text is scored chunk by chunk; the worst chunk counts.
    long = "a fine sentence. " * 40 + "then a banana. " + "more fine words. " * 40
    assert all(b - a <= 50 for a, b in chunks(long, 50))
    assert Moderator(rules=False, learned=learned).moderate(long)[0].flagged


def test_chunks_cover_the_text_at_sentence_ends_and_spaces():
    text = "One sentence here. Another one follows it. " * 10 + "x" * 130
    spans = chunks(text, 60)
    assert "".join(text[a:b] for a, b in spans).replace(" ", "") == text.replace(" ", "")
    assert all(b - a <= 60 for a, b in spans) and spans[0][1] <= 60
    assert text[spans[0][0]:spans[0][1]].endswith(".")
    assert chunks("   ", 10) == []


@pytest.fixture(scope="module")
def tiny_moderator(tmp_path_factory) -> Path:
    """A real learned moderator, tiny and barely trained: a classification fine-tune with moderation.json."""
    root = tmp_path_factory.mktemp("moderator")
    tokenizer = Tokenizer.train_bpe([r["text"].lower() for r in read_benign()[:500]], 300)
    torch.manual_seed(0)
    gpt = GPT(ModelConfig.from_dict(dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2,
                                         n_embd=32)))
    save_checkpoint(root / "base", gpt, tokenizer)
    rows = [{"text": f"a banana {i}", "label": "sexual"} for i in range(20)]
    rows += [{"text": f"a fine day {i}", "label": "none"} for i in range(20)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = FinetuneArgs(checkpoint=root / "base", data=str(root / "data.jsonl"), out=root / "run", task="classify",
                        peft=PeftConfig(method="full"), val_fraction=0.25, test_fraction=0.25, quiet=True)
    args.train.max_iters, args.train.eval_interval, args.train.batch_size = 3, 3, 8
    run_finetune(args)
    ModerationSpec(threshold=0.5, text_style="english_mix", chunk_chars=150).save(root / "run" / "best")
    return root


def test_a_learned_moderator_loads_through_the_one_loader(tiny_moderator):
    llm = LLM.load(tiny_moderator / "run")
    results = llm.moderate(["Shit!", "A BANANA", "x " * 2000])
    assert all(r.learned is not None for r in results)
    assert set(results[1].categories) == {"sexual", "hate", "vulgarity"}  # trained on sexual only: no violence
    assert results[0].flagged and results[0].matches[0].word == "shit"
    assert llm.moderate("a banana", learned=False)[0].learned is None
    moderator = load_moderator(tiny_moderator / "run", threshold=0.01)
    assert moderator.learned is not None and moderator.learned.threshold == 0.01
    assert moderator.moderate("a fine day")[0].flagged  # everything reaches a threshold that low


def test_asking_for_a_learned_part_that_is_not_there_says_how_to_train_one(tiny_moderator):
    plain = LLM.load(tiny_moderator / "base")
    assert plain.moderate("fine")[0].learned is None  # rules only
    with pytest.raises(GptkitError, match="gptkit moderate --train"):
        plain.moderate("fine", learned=True)
    with pytest.raises(GptkitError, match="gptkit moderate --train"):
        load_moderator(tiny_moderator / "base")


# --- output moderation ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def char_tokenizer() -> Tokenizer:
    return Tokenizer.train_char(["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,!?'-\n0123456789"])


def grow(tokenizer, text, guard):
    """Feed `text` one character token at a time; returns (the pieces shown, the final text, filtered)."""
    incremental = IncrementalText(tokenizer, (), guard)
    pieces = []
    for ch in text:
        incremental.push(tokenizer.encode(ch)[0])
        pieces.append(incremental.take())
        if incremental.stopped:
            break
    incremental.flush()
    pieces.append(incremental.take(final=True))
    return pieces, incremental.text, incremental.filtered


def test_output_moderation_cuts_at_the_flagged_word_and_never_shows_it(char_tokenizer, moderator):
    text = "It was a fine day and then shit happened, sadly."
    pieces, final, filtered = grow(char_tokenizer, text, moderator)
    assert filtered and final == "It was a fine day and then "
    assert "".join(pieces) == final and not any("shit" in "".join(pieces[:i]) for i in range(len(pieces)))
    # A listed word inside a longer one is let through once the word is complete.
    pieces, final, filtered = grow(char_tokenizer, "Our assistant is classic.", moderator)
    assert not filtered and "".join(pieces) == final == "Our assistant is classic."
    # Spelt out, the word is caught too; the held-back tail is bounded.
    _, final, filtered = grow(char_tokenizer, "well f u c k that", moderator)
    assert filtered and final == "well "
    pieces, _, _ = grow(char_tokenizer, "x" * 1000, moderator)
    assert len(pieces[700]) == 1 and len("".join(pieces[:1000])) >= 1000 - MAX_PENDING_CHARS


def test_output_moderation_with_the_learned_part_judges_whole_sentences(char_tokenizer):
    moderator = Moderator(rules=False, learned=LearnedClassifier(fake_predict, ["none", "sexual", "violence"],
                                                                   chunk_chars=80))
    pieces, final, filtered = grow(char_tokenizer, "A fine day. We ate. Then a banana came. More text.", moderator)
    assert filtered and final == "A fine day. We ate. "
    assert "".join(pieces) == final
    pieces, final, filtered = grow(char_tokenizer, "A fine day. No fruit at all", moderator)
    assert not filtered and final == "A fine day. No fruit at all"


# --- policies ---------------------------------------------------------------------------------------------------

def test_the_data_filter_and_the_request_guard(moderator):
    keep_out = DataFilter(moderator, 0.5)
    assert keep_out("fine text") is None and keep_out("oh shit") == "rule: shit (vulgarity)"
    assert "0.5" in keep_out.description
    with pytest.raises(GptkitError, match="filter-moderation"):
        DataFilter(moderator, 0.0)
    learned = Moderator(learned=LearnedClassifier(fake_predict, ["none", "sexual", "violence"]))
    assert DataFilter(learned, 0.85)("a banana").startswith("learned: 0.900 (sexual)")
    assert DataFilter(learned, 0.95)("a banana") is None
    guard = RequestGuard(moderator, "output")
    assert guard.check_input(["shit"]) is None and guard.output_guard is moderator
    guard = RequestGuard(moderator, "input", refusal_message="No.")
    assert guard.check_input(["fine", "shit"]).matches[0].word == "shit" and guard.output_guard is None
    with pytest.raises(GptkitError, match="--moderation"):
        RequestGuard(moderator, "sometimes")


def test_system_prompts_come_from_text_or_a_file(tmp_path):
    assert read_system_prompt(None) is None and read_system_prompt("  ") is None
    assert read_system_prompt("Be kind.") == "Be kind."
    (tmp_path / "ethics.txt").write_text("Be honest.\nRefuse to help with harm.\n")
    assert read_system_prompt(str(tmp_path / "ethics.txt")) == "Be honest.\nRefuse to help with harm."


def test_moderating_a_file_replaces_bad_bytes_and_cli_prints_json_lines(tmp_path, moderator):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"clean line\nsh\xffit happens\n\nbitch\n")
    items = list(moderate_file(moderator, path))
    assert [(i.line, i.result.flagged, i.replaced) for i in items] == [(1, False, False), (2, True, True),
                                                                        (4, True, False)]
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text(json.dumps({"body": "fine"}) + "\n" + json.dumps({"body": "f.u.c.k"}) + "\n")
    assert [i.result.flagged for i in moderate_file(moderator, jsonl, text_field="body")] == [False, True]
    with pytest.raises(GptkitError, match="text-field"):
        list(moderate_file(moderator, jsonl))
    done = subprocess.run([sys.executable, "-m", "gptkit", "moderate", "--data", str(path)], capture_output=True,
                          text=True, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(x["line"], x["flagged"]) for x in lines] == [(1, False), (2, True), (4, True)]
    assert "not valid UTF-8" in done.stderr and "U+FFFD" in done.stderr


# --- data and metrics -------------------------------------------------------------------------------------------

def test_the_bundled_split_is_held_out_by_category():
    splits = moderation_splits()
    assert list(splits.train.labels) == list(LABELS) and set(CATEGORIES) <= set(splits.train.row_labels)
    train_sources = {key.split("/")[1] for key in splits.sources["train"]} | \
        {key.split("/")[1] for key in splits.sources["val"]}
    test_sources = {key.split("/")[1] for key in splits.sources["test"]}
    assert {"privates", "misogyny", "misandry", "drugs", "food", "law", "politics"} <= test_sources
    assert not {"privates", "misogyny", "misandry", "drugs", "food", "law", "politics"} & train_sources
    assert not set(splits.train.texts) & set(splits.test.texts) and not set(splits.val.texts) & set(splits.test.texts)
    assert moderation_splits().test.texts == splits.test.texts  # seeded


def test_benign_prose_trains_and_leaves_the_false_positive_text_unseen():
    splits = moderation_splits()
    seen = {key for part in ("train", "val") for key in splits.sources[part]}
    assert {"none/austen", "none/kjv", "none/jargon"} <= seen
    prose = read_benign_prose()
    with open(bundled_labelled("jargon"), encoding="utf-8") as f:
        held_jargon = {json.loads(line)["definition"] for line in f if line.strip()}
    assert not {r["text"] for r in prose} & held_jargon  # the benchmark's Jargon text stays unseen
    assert not any("Jesus" in r["text"] for r in prose if r["category"] == "kjv")  # Old Testament only


def test_identity_blind_hides_group_names_and_only_whole_words():
    blind = text_style("english_mix_blind")
    assert blind("My neighbour Wei is Jewish; his GAY friends are Irish-born.") == \
        "my neighbour wei is ; his friends are -born ."
    untouched = "a jewel of a gayety, italianate and christianity's arabesques ."
    assert identity_blind(untouched) == untouched
    assert blind("Muslims and Hindus") == blind("Catholics and Sikhs")  # the classifier cannot tell them apart


def test_detection_metrics():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5 and roc_auc([1, 2], [True, True]) is None
    report = flag_report([0.9, 0.8, 0.3, 0.2], [True, False, True, False], 0.5)
    assert (report["precision"], report["recall"], report["fpr"]) == (0.5, 0.5, 0.5)
    threshold, report = calibrate_threshold([0.9, 0.8, 0.6, 0.3, 0.2], [True, True, False, True, False], max_fpr=0.0)
    assert 0.6 < threshold <= 0.8 and report["fpr"] == 0.0 and report["recall"] == pytest.approx(2 / 3)


def test_the_command_line_flags_build_the_servers_guard_and_read_system_prompts(tmp_path, tiny_moderator):
    import tyro

    from gptkit.cli import _request_guard
    from gptkit.cli.args import ChatArgs, ServeArgs

    assert tyro.cli(ChatArgs, args=["--system-prompt", "Be kind."]).system == "Be kind."
    serve = tyro.cli(ServeArgs, args=["--checkpoint", "x", "--moderation", "both", "--moderation-model",
                                      str(tiny_moderator / "run"), "--system-prompt", "ethics.txt"])
    guard = _request_guard(serve)
    assert guard.mode == "both" and guard.moderator.learned is not None and serve.system_prompt == "ethics.txt"
    assert _request_guard(ServeArgs(checkpoint=Path("x"))) is None
    with pytest.raises(GptkitError, match="--moderation input"):
        _request_guard(ServeArgs(checkpoint=Path("x"), moderation="output", refusal_message="No."))
    with pytest.raises(GptkitError, match="need --moderation"):
        _request_guard(ServeArgs(checkpoint=Path("x"), moderation_model=tiny_moderator / "run"))
