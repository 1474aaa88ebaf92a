"""`gptkit prepare --filter-moderation`: documents the moderator scores at or above the threshold are left out of both
splits, counted in meta.json and listed (source, index, reason, first characters) in OUT/filtered.jsonl."""

from __future__ import annotations

import json

import pytest

from gptkit.data import TokenDataset
from gptkit.data.prepare import prepare
from gptkit.errors import GptkitError
from gptkit.safety.moderation import LearnedClassifier, Moderator
from gptkit.safety.policy import DataFilter
from test_prepare import documents  # tests/data is on the path (pytest's prepend import mode)

CLEAN = ["The cat sat on the mat, number {i}.", "A quiet morning by the sea, day {i}.", "Tea and toast at four, {i}."]
DIRTY = ["What the f.u.c.k is this, {i}?", "Sh1t happens on day {i}."]


@pytest.fixture
def corpus(tmp_path):
    rows = [template.format(i=i) for i in range(30) for template in CLEAN + DIRTY]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    return path, rows


def test_flagged_documents_are_counted_listed_and_left_out(tmp_path, corpus):
    path, rows = corpus
    meta = prepare([path], tmp_path / "out", tokenizer="char", workers=1, progress=False,
                   document_filter=DataFilter(Moderator(), 0.5))
    dirty = [i for i, t in enumerate(rows) if "f.u.c.k" in t or "Sh1t" in t]
    assert meta["filtered"]["documents"] == len(dirty) == 60
    assert meta["filtered"]["bytes"] == sum(len(rows[i].encode()) for i in dirty)
    assert meta["splits"]["train"]["n_documents"] + meta["splits"]["val"]["n_documents"] == len(rows) - len(dirty)
    log = [json.loads(line) for line in (tmp_path / "out" / "filtered.jsonl").read_text().splitlines()]
    assert [entry["document"] for entry in log] == dirty
    assert log[0] == {"source": str(path), "document": dirty[0], "reason": "rule: fuck (vulgarity)",
                      "bytes": len(rows[dirty[0]].encode()), "start": rows[dirty[0]]}
    kept = documents(TokenDataset(tmp_path / "out"), "train") + documents(TokenDataset(tmp_path / "out"), "val")
    assert sorted(kept) == sorted(t for i, t in enumerate(rows) if i not in dirty)


def test_the_learned_score_counts_against_the_threshold(tmp_path, corpus):
    path, rows = corpus

    def predict(texts):  # "sea" is, for this test, offensive with probability 0.7
        return [{"none": 0.3, "sexual": 0.7} if "sea" in t else {"none": 0.95, "sexual": 0.05} for t in texts]

    moderator = Moderator(learned=LearnedClassifier(predict, ["none", "sexual"], threshold=0.9))
    strict = prepare([path], tmp_path / "strict", tokenizer="char", workers=1, progress=False,
                     document_filter=DataFilter(moderator, 0.6))
    lenient = prepare([path], tmp_path / "lenient", tokenizer="char", workers=1, progress=False,
                      document_filter=DataFilter(moderator, 0.8))
    assert strict["filtered"]["documents"] == 90 and lenient["filtered"]["documents"] == 60  # rules count as 1.0
    reasons = {json.loads(line)["reason"] for line in (tmp_path / "strict" / "filtered.jsonl").open()}
    assert "learned: 0.700 (sexual)" in reasons


def test_a_single_text_file_cannot_be_filtered_and_nothing_left_is_an_error(tmp_path):
    text = tmp_path / "one.txt"
    text.write_text("one long document\n" * 50)
    with pytest.raises(GptkitError, match="one document"):
        prepare([text], tmp_path / "out", document_filter=DataFilter(Moderator(), 0.5), progress=False)
    dirty = tmp_path / "dirty.jsonl"
    dirty.write_text("".join(json.dumps({"text": f"shit {i}"}) + "\n" for i in range(5)))
    with pytest.raises(GptkitError, match="left out 5 document"):
        prepare([dirty], tmp_path / "out2", document_filter=DataFilter(Moderator(), 0.5), progress=False)


def test_the_command_line_reports_what_it_left_out(tmp_path, corpus, run_cli):
    path, _ = corpus
    done = run_cli("prepare", "--input", str(path), "--out", str(tmp_path / "cli"), "--tokenizer", "char",
                   "--workers", "1", "--filter-moderation", "0.5")
    assert "left out 60 document(s)" in done.stdout and "filtered.jsonl" in done.stdout
    assert json.loads((tmp_path / "cli" / "meta.json").read_text())["filtered"]["documents"] == 60
    refused = run_cli("prepare", "--input", str(path), "--out", str(tmp_path / "cli2"), "--moderation-model", "x",
                      check=False)
    assert refused.returncode == 2 and "--filter-moderation" in refused.stderr
