"""Labelled data: reading, bundled sets, stratified splits, and the classification report (vs scikit-learn)."""

import fnmatch
import json
import math
import random
import tomllib
from pathlib import Path

import numpy as np
import pytest

from gptkit.data.labelled import (BUNDLED_LABELLED, LABELLED_DIR, LabelledData, bundled_labelled, check_split,
                                  read_labelled, sort_labels, stratified_split, subsample_stratified)
from gptkit.errors import GptkitError
from gptkit.evaluation.classification import classification_report, format_classification_report

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def make_data(counts: dict[str, int]) -> LabelledData:
    pairs = [(f"{label} text {i}", label) for label, n in counts.items() for i in range(n)]
    random.Random(1).shuffle(pairs)
    return LabelledData.from_pairs(pairs)


# --- bundled data -----------------------------------------------------------------------------------


def test_bundled_sentiment_and_fortunes_read_balanced():
    sentiment = read_labelled(bundled_labelled("sentiment"))
    assert len(sentiment) == 4000 and sentiment.labels == ["-1", "1"]
    assert sentiment.label_counts() == {"-1": 2000, "1": 2000}
    fortunes = read_labelled(bundled_labelled("fortunes8"))
    assert len(fortunes.labels) == 8 and set(fortunes.label_counts().values()) == {160}


def test_bundled_files_are_small_documented_and_shipped_as_package_data():
    files = sorted(p for p in LABELLED_DIR.iterdir() if p.is_file())
    assert sum(p.stat().st_size for p in files) < 1.5e6
    provenance = (LABELLED_DIR / "PROVENANCE.md").read_text()
    for name, filename in BUNDLED_LABELLED.items():
        assert bundled_labelled(name).is_file()
        assert f"## {filename} (`{name}`)" in provenance
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gptkit"]
    for path in files:
        relative = path.relative_to(REPO / "gptkit").as_posix()
        assert any(fnmatch.fnmatch(relative, g) for g in globs), f"{relative} would be left out of the wheel"


def test_unknown_bundled_name_lists_the_available_ones():
    with pytest.raises(GptkitError, match="available: chatterbot, fortunes8, jargon, sentiment"):
        bundled_labelled("imdb")


# --- reading --------------------------------------------------------------------------------------------


def test_csv_tsv_and_jsonl_read_the_same_rows(tmp_path):
    rows = [("a fine, \"quoted\"\nfilm", "pos"), ("dull", "neg"), ("ok", "pos")]
    csv_text = "label,text\n" + "".join(f'{label},"{text.replace(chr(34), chr(34) * 2)}"\n' for text, label in rows)
    tsv_text = "id\ttext\tlabel\n" + "".join(f'{i}\t"{t.replace(chr(34), chr(34) * 2)}"\t{label}\n'
                                             for i, (t, label) in enumerate(rows))
    jsonl_text = "".join(json.dumps({"text": t, "label": label}) + "\n\n" for t, label in rows)
    for path in (write(tmp_path / "d.csv", "\ufeff" + csv_text), write(tmp_path / "d.tsv", tsv_text),
                 write(tmp_path / "d.jsonl", jsonl_text)):
        data = read_labelled(path)
        assert list(data) == rows, path
        assert data.labels == ["neg", "pos"] and data.label_ids == [1, 0, 1]


def test_columns_format_override_and_fixed_vocabulary(tmp_path):
    path = write(tmp_path / "d.txt", '{"review": "good", "stars": 5}\n{"review": "bad", "stars": 1}\n')
    data = read_labelled(path, "review", "stars", format="jsonl", labels=["1", "3", "5"])
    assert data.row_labels == ["5", "1"] and data.label_ids == [2, 0] and data.labels == ["1", "3", "5"]
    with pytest.raises(GptkitError, match=r"line 1: label '5' is not one of the given labels"):
        read_labelled(path, "review", "stars", format="jsonl", labels=["1"])


def test_numeric_labels_sort_numerically():
    assert sort_labels(["10", "2", "-1", "2"]) == ["-1", "2", "10"]
    assert sort_labels(["b", "a", "10"]) == ["10", "a", "b"]


@pytest.mark.parametrize("name, content, pattern", [
    ("missing.csv", "review,stars\nnice,1\n", r"no column 'text' \(text_column\); available columns: review, stars"),
    ("empty_text.csv", "text,label\nfine,a\n  ,b\n", r"row 2 \(line 3\): empty text in column 'text'"),
    ("empty_label.jsonl", '{"text": "x", "label": ""}\n', r"line 1\): empty label"),
    ("no_rows.csv", "text,label\n", r"has no rows \(only a header\)"),
    ("nothing.jsonl", "\n\n", "has no rows"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n', r"line 2: malformed JSON"),
    ("list.jsonl", '["a", "x"]\n', r"line 1: expected a JSON object, found list"),
    ("float.jsonl", '{"text": "a", "label": 0.5}\n', r"column 'label' holds 0.5, expected a string or an integer"),
    ("ragged.csv", "text,label\na,b,c\n", r"line 2: 3 fields but the header has 2"),
    ("data.parquet", "x", r"extension '.parquet': use one of .csv, .tsv"),
    ("ids.csv", "text,label\n" + "".join(f"t{i},{i}\n" for i in range(12)),
     r"every one of its 12 rows has a different label.*label_column='label'"),
])
def test_bad_files_are_clear_errors(tmp_path, name, content, pattern):
    with pytest.raises(GptkitError, match=pattern):
        read_labelled(write(tmp_path / name, content))


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nfine,a\ncaf\u00e9,b\n".encode("latin-1"))
    with pytest.raises(GptkitError, match=r"line 3: not UTF-8 \(byte 0xe9\).*iconv"):
        read_labelled(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(GptkitError, match="no labelled data file"):
        read_labelled(tmp_path / "nope.csv")


# --- splitting ------------------------------------------------------------------------------------------


def test_stratified_split_cuts_each_label_in_proportion():
    counts = {"a": 100, "b": 40, "c": 15, "d": 2}
    data = make_data(counts)
    train, val, test = stratified_split(data, val_fraction=0.1, test_fraction=0.2, seed=3)
    for label, n in counts.items():
        expected_test = math.floor(n * 0.2 + 0.5)
        expected_val = math.floor(n * 0.1 + 0.5)
        if label == "d":  # 2 rows: 0.4 -> 0 test, 0.2 -> 0 val; training keeps both
            expected_test = expected_val = 0
        assert test.label_counts()[label] == expected_test
        assert val.label_counts()[label] == expected_val
        assert train.label_counts()[label] == n - expected_test - expected_val
    # a partition of the rows, each split in file order, ids over the parent's vocabulary
    all_texts = train.texts + val.texts + test.texts
    assert sorted(all_texts) == sorted(data.texts) and len(set(all_texts)) == len(data)
    for split in (train, val, test):
        positions = [data.texts.index(t) for t in split.texts]
        assert positions == sorted(positions) and split.labels == data.labels


def test_stratified_split_is_deterministic_and_seeded():
    data = make_data({"a": 50, "b": 50})
    first = stratified_split(data, seed=0)
    assert [s.texts for s in first] == [s.texts for s in stratified_split(data, seed=0)]
    assert first[2].texts != stratified_split(data, seed=1)[2].texts


def test_a_label_keeps_one_training_row_and_an_empty_requested_split_is_an_error():
    train, _, test = stratified_split(make_data({"a": 1, "b": 30}), val_fraction=0.0, test_fraction=0.5)
    assert train.label_counts()["a"] == 1 and test.label_counts()["a"] == 0
    with pytest.raises(GptkitError, match="the test split is empty"):
        stratified_split(make_data({"a": 2, "b": 2}), val_fraction=0.0, test_fraction=0.1)
    with pytest.raises(GptkitError, match="must leave rows for training"):
        stratified_split(make_data({"a": 10}), val_fraction=0.5, test_fraction=0.5)


def test_subsample_stratified_keeps_a_fraction_of_every_label():
    data = make_data({"a": 200, "b": 40, "c": 3})
    labelled, pool = subsample_stratified(data, 0.05, seed=0)
    assert labelled.label_counts() == {"a": 10, "b": 2, "c": 1}  # at least one of every label
    assert len(pool) == len(data) - len(labelled)
    assert not set(labelled.texts) & set(pool.texts)
    assert subsample_stratified(data, 0.05, seed=0)[0].texts == labelled.texts
    with pytest.raises(GptkitError, match="fraction must be in"):
        subsample_stratified(data, 0.0)


def test_check_split_names_a_label_never_seen_in_training():
    train = LabelledData.from_pairs([("x", "a"), ("y", "b")])
    test = LabelledData.from_pairs([("z", "c"), ("w", "a")])
    with pytest.raises(GptkitError, match="label 'c' appears in the test split but never in training"):
        check_split(train, test)
    check_split(train, LabelledData.from_pairs([("w", "a")]))  # fine


# --- classification report ---------------------------------------------------------------------------


def test_classification_report_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = ["ant", "bee", "cat", "dog"]
    for trial in range(5):
        y_true = rng.integers(0, 4, size=60).tolist()
        y_pred = rng.choice([0, 1, 2], size=60).tolist()  # "dog" is never predicted
        if trial == 4:
            y_true = [t if t != 2 else 0 for t in y_true]  # "cat" never true but predicted
        report = classification_report(y_true, y_pred, labels)
        ref = metrics.classification_report(y_true, y_pred, labels=range(4), target_names=labels,
                                            output_dict=True, zero_division=0)
        for label in labels:
            for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"),
                                 ("support", "support")):
                assert report["per_class"][label][ours] == pytest.approx(ref[label][theirs])
        for avg in ("macro avg", "weighted avg"):
            for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
                assert report[avg][ours] == pytest.approx(ref[avg][theirs])
        assert report["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred))
        assert report["macro avg"]["f1"] == pytest.approx(
            metrics.f1_score(y_true, y_pred, labels=range(4), average="macro", zero_division=0))
        assert report["confusion_matrix"] == metrics.confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    assert report["per_class"]["dog"]["precision"] == 0.0  # never predicted: zero division -> 0
    json.dumps(report)  # plain Python numbers


def test_formatted_report_shows_every_class_and_the_matrix():
    report = classification_report([0, 1, 1, 2], [0, 1, 2, 2], ["neg", "neu", "pos"])
    text = format_classification_report(report, digits=2)
    lines = text.splitlines()
    assert any(line.split() == ["neu", "1.00", "0.50", "0.67", "2"] for line in lines)
    assert any(line.split() == ["accuracy", "0.75", "4"] for line in lines)
    assert "confusion matrix (rows: true, columns: predicted)" in text
    assert any(line.split() == ["neg", "neu", "pos"] for line in lines)  # the matrix's column headers
    assert any(line.split() == ["neu", "0", "1", "1"] for line in lines)


def test_classification_report_input_errors():
    with pytest.raises(GptkitError, match="3 true labels but 2 predictions"):
        classification_report([0, 1, 1], [0, 1], ["a", "b"])
    with pytest.raises(GptkitError, match="y_pred holds label id 2, outside 0..1"):
        classification_report([0, 1], [0, 2], ["a", "b"])


def test_repr_is_a_summary():
    data = LabelledData.from_pairs([("x", "a"), ("y", "b")], source="d.csv")
    assert repr(data) == "LabelledData(2 rows, labels=['a', 'b'], source='d.csv')"
