"""Counterfactual edits: each rule on examples, labels flipped or kept, recorded rules, determinism, the lexicons,
and `gptkit augment --counterfactual` writing a file or refusing bad input."""

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest

from gptkit.data.augment.counterfactual import (LEXICON_DIR, LEXICONS, RULES, apply_rule, counterfactuals,
                                                flip_label_map, lexicon_pairs, match_case, read_pairs,
                                                write_counterfactuals)
from gptkit.data.labelled import LabelledData, bundled_labelled, read_labelled
from gptkit.errors import GptkitError

REPO = Path(__file__).resolve().parents[2]


def edited(rule: str, text: str) -> str | None:
    result = apply_rule(rule, text)
    return None if result is None else result[0]


# --- negation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The film is good.", "The film is not good."),
    ("IT WAS GREAT", "IT WAS NOT GREAT"),
    ("It's a charming , often affecting journey .", "It's not a charming , often affecting journey ."),
    ("It’s charming.", "It’s not charming."),  # a typographic apostrophe is kept
    ("You can see why.", "You cannot see why."),
    ("They were the best.", "They were not the best."),
    ("The piece is still intact.", "The piece is still not intact."),  # after an adverb that reads better first
])
def test_negation_insert_puts_not_after_the_one_copula_or_modal(text, expected):
    assert edited("negation.insert", text) == expected


@pytest.mark.parametrize("text", [
    "The acting is good and the plot is thin.",  # two sites: negating one clause may not flip the label
    "The film isn't good.",  # already negated
    "It is never dull.",
    "No fun at all, it was.",
    "A charming, affecting journey.",  # no copula or modal
    "A must-see film.",  # inside a hyphenated compound
])
def test_negation_insert_leaves_texts_it_cannot_flip_safely(text):
    assert apply_rule("negation.insert", text) is None


@pytest.mark.parametrize("text, expected", [
    ("The film isn't good.", "The film is good."),
    ("Isn't it lovely?", "Is it lovely?"),
    ("IT ISN'T GOOD", "IT IS GOOD"),
    ("It won’t work.", "It will work."),
    ("I can't stand it.", "I can stand it."),
    ("It doesn't work.", "It does work."),
    ("You cannot miss it.", "You can miss it."),
    ("it is not bad .", "it is bad ."),
    ("Not bad at all.", "Bad at all."),
    ("it is n't good .", "it is good ."),  # Penn Treebank tokenisation
    ("it wo n't work .", "it will work ."),
])
def test_negation_remove_undoes_the_one_negation_with_contractions(text, expected):
    assert edited("negation.remove", text) == expected


@pytest.mark.parametrize("text", ["It isn't bad, and it's not good.", "It is not never good.", "It is good.",
                                  "It is never good."])
def test_negation_remove_needs_exactly_one_removable_negation(text):
    assert apply_rule("negation.remove", text) is None


def test_negation_edits_are_recorded_with_their_context():
    assert apply_rule("negation.insert", "the film is good .") == ("the film is not good .", "is good → is not good")
    assert apply_rule("negation.remove", "it isn't good") == ("it is good", "isn't good → is good")
    assert apply_rule("negation.remove", "it is not bad") == ("it is bad", "is not bad → is bad")


# --- swaps ------------------------------------------------------------------------------------------


def test_antonyms_swap_every_lexicon_word_keeping_case():
    text, change = apply_rule("antonym", "A good film, the BEST ever. Loved it! Good.")
    assert text == "A bad film, the WORST ever. Hated it! Bad."
    assert change == "good → bad; BEST → WORST; Loved → Hated; Good → Bad"
    assert edited("antonym", "a terrible , ugly mess") == "a great , beautiful mess"  # both directions


def test_antonyms_fix_the_article_and_leave_compounds_and_other_words():
    assert edited("antonym", "an excellent cast and a boring plot") == "an awful cast and an entertaining plot"
    assert apply_rule("antonym", "a good-natured romp") is None
    assert apply_rule("antonym", "goodness gracious") is None


def test_gender_swaps_pronouns_by_position_and_nouns_with_possessives():
    assert edited("gender", "He loves her dog.") == "She loves his dog."
    assert edited("gender", "he loves her .") == "she loves him ."
    assert edited("gender", "She gave her the book.") == "He gave him the book."  # "the" cannot follow a possessive
    assert edited("gender", "His choice was his.") == "Her choice was hers."
    assert edited("gender", "That one is hers, and he told him.") == "That one is his, and she told her."
    assert edited("gender", "the man's hat and an actor") == "the woman's hat and an actress"
    assert edited("gender", "THE KING and his queen") == "THE QUEEN and her king"
    assert edited("gender", "He's with her and her sister.") == "She's with him and his brother."


def test_names_and_places_swap_within_their_lists():
    assert edited("name", "John met Mary; john's car.") == "James met Patricia; james's car."
    assert apply_rule("name", "I will frank the letter with grace.") is None  # names that are words are not listed
    assert edited("place", "An American in Paris and New York.") == "A Canadian in London and Los Angeles."
    assert edited("place", "a french film") == "an italian film"


def test_match_case():
    assert [match_case(s, "bad") for s in ("good", "Good", "GOOD", "gOOd")] == ["bad", "Bad", "BAD", "bad"]
    assert match_case("New York", "los angeles") == "Los Angeles"
    assert match_case("He’s", "she's") == "She’s"


# --- labels, records, determinism ------------------------------------------------------------------


def test_flip_edits_flip_binary_labels_and_keep_edits_keep_them():
    data = LabelledData.from_pairs([("the film is good .", "pos"), ("he isn't funny .", "neg"), ("a film .", "pos")])
    edits = counterfactuals(data)
    records = [(e.source_index, e.rule, e.kind, e.label, e.text) for e in edits]
    assert records == [
        (0, "negation.insert", "flip", "neg", "the film is not good ."),
        (0, "antonym", "flip", "neg", "the film is bad ."),
        (1, "negation.remove", "flip", "pos", "he is funny ."),
        (1, "antonym", "flip", "pos", "he isn't unfunny ."),
        (1, "gender", "keep", "neg", "she isn't funny ."),
    ]
    assert edits[0].to_json() == {"text": "the film is not good .", "label": "neg", "source_index": 0,
                                  "rule": "negation.insert", "kind": "flip", "edit": "is good → is not good"}
    assert [e.rule for e in counterfactuals(data, kinds=("keep",))] == ["gender"]
    assert [e.rule for e in counterfactuals(data, rules=["antonym"])] == ["antonym", "antonym"]


def test_labels_other_than_binary_need_a_mapping():
    three = LabelledData.from_pairs([("it is good", "5"), ("it is bad", "1"), ("it is a film", "3")])
    with pytest.raises(GptkitError, match="3 label"):
        counterfactuals(three)
    assert [e.rule for e in counterfactuals(three, kinds=("keep",))] == []  # keep edits need no mapping
    edits = counterfactuals(three, flip_labels={"5": "1", "1": "5"})
    assert {(e.source_index, e.label) for e in edits} == {(0, "1"), (1, "5")}  # the unmapped "3" row: no flips
    with pytest.raises(GptkitError, match="does not have"):
        flip_label_map(["1", "3", "5"], {"5": "0"})


def test_edits_of_the_bundled_set_are_deterministic_and_cover_every_rule():
    data = read_labelled(bundled_labelled("sentiment")).subset(range(0, 4000, 4))
    first, second = counterfactuals(data), counterfactuals(data)
    assert first == second
    assert {e.rule for e in first} == set(RULES)
    for e in first:
        flipped = e.kind == "flip"
        assert (e.label != data.row_labels[e.source_index]) == flipped
        assert e.text != data.texts[e.source_index] and "→" in e.edit


def test_lexicons_are_bijective_documented_and_shipped():
    provenance = (LEXICON_DIR / "PROVENANCE.md").read_text()
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gptkit"]
    for name in LEXICONS:
        pairs = lexicon_pairs(name)
        words = [w for pair in pairs for w in pair]
        assert len(pairs) >= 30 and len(words) == len(set(words))
        assert f"{name}.tsv" in provenance
    for path in LEXICON_DIR.iterdir():
        relative = path.relative_to(REPO / "gptkit").as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), f"{relative} would be left out of the wheel"


def test_a_lexicon_entry_may_appear_once(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("# comment\ngood\tbad\ngreat\tbad\n")
    with pytest.raises(GptkitError, match="line 3: 'bad' already appears on line 2"):
        read_pairs(path)


# --- files and the command line ---------------------------------------------------------------------


def test_write_counterfactuals_writes_originals_then_edits(tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text("review,stars\n\"it is good , says he .\",1\nplain text,0\n", encoding="utf-8")
    out = tmp_path / "out" / "cf.jsonl"
    summary = write_counterfactuals(data, out, text_column="review", label_column="stars")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["source_index"], r["rule"], r["label"]) for r in rows] == [
        (0, "original", "1"), (0, "negation.insert", "0"), (0, "antonym", "0"), (0, "gender", "1"),
        (1, "original", "0")]
    assert summary["by_rule"]["antonym"] == 1 and summary["rows"] == 2 and summary["written"] == 5
    assert read_labelled(out).labels == ["0", "1"]  # the output is labelled data gptkit finetune reads
    only = write_counterfactuals(data, tmp_path / "edits.jsonl", text_column="review", label_column="stars",
                                 edits_only=True, kinds=["keep"])
    assert only["written"] == 1 and only["by_rule"] == {"gender": 1, "name": 0, "place": 0}


def test_a_bundled_set_is_read_by_name(tmp_path):
    summary = write_counterfactuals("sentiment", tmp_path / "cf.jsonl", rules=["place"], edits_only=True)
    assert summary["rows"] == 4000 and summary["by_rule"] == {"place": summary["written"]} and summary["written"] > 50
    with pytest.raises(GptkitError, match="available: chatterbot, fortunes8"):
        write_counterfactuals("imdb", tmp_path / "x.jsonl")


def test_cli_writes_the_file_and_prints_counts_per_rule(tmp_path, run_cli):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "The plot is good.", "label": 1}\n{"text": "She is not funny.", "label": 0}\n')
    out = tmp_path / "cf.jsonl"
    proc = run_cli("augment", "--counterfactual", "--data", str(data), "--out", str(out), "--kinds", "flip")
    assert "negation.insert" in proc.stdout and "gender" not in proc.stdout
    assert f"wrote {out}: 6 rows (4 edits of 2 of the 2 rows" in proc.stdout
    rules = [json.loads(line)["rule"] for line in out.read_text().splitlines()]
    assert rules == ["original", "negation.insert", "antonym", "original", "negation.remove", "antonym"]


@pytest.mark.parametrize("content, flags, needle", [
    ("label,text\n", (), "has no rows"),
    ("stars,review\n1,good\n", (), "no column 'text'"),
    ("label,text\n1,it is good\n2,it is bad\n3,meh\n", (), "3 label(s)"),
    ("label,text\n1,it is good\n", ("--kinds", "sideways"), "unknown kind"),
    ("label,text\n1,it is good\n", ("--rules", "negation.twice"), "unknown rule"),
    ("label,text\n1,it is good\n0,bad\n", ("--flip-labels", "1"), "LABEL=FLIPPED"),
])
def test_cli_bad_input_gives_one_clear_message(tmp_path, run_cli, content, flags, needle):
    data = tmp_path / "data.csv"
    data.write_text(content)
    proc = run_cli("augment", "--counterfactual", "--data", str(data), "--out", str(tmp_path / "o.jsonl"), *flags,
                   check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert not (tmp_path / "o.jsonl").exists()
