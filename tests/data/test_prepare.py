import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import gptkit.data.prepare as prepare_module
from gptkit.data import TokenDataset, bundled_corpus_path
from gptkit.data.prepare import prepare, read_text, token_dtype
from gptkit.errors import GptkitError
from gptkit.tokenizer import Tokenizer

# Multi-byte characters on purpose: 2-, 3- and 4-byte UTF-8, so byte counts differ from characters.
UNICODE_TAIL = "Naïve café, 漢字 and 🙂 emoji.\r\nCRLF line, tab\tend\n"


def make_text(shakespeare_text: str, n_chars: int = 20_000) -> str:
    """Shakespeare with multi-byte lines sprinkled every 300 characters, wherever the split falls."""
    return "".join(shakespeare_text[i:i + 300] + UNICODE_TAIL for i in range(0, n_chars, 300))


def decode(dataset: TokenDataset, split: str) -> str:
    return dataset.tokenizer.decode(dataset.split(split).tolist())


def documents(dataset: TokenDataset, split: str) -> list[str]:
    """Decode a multi-document split into its documents, checking each one ends with EOS."""
    ids = dataset.split(split).tolist()
    eos = dataset.meta["eos_id"]
    assert ids and ids[-1] == eos, "every document, the last one included, must end with EOS"
    docs, current = [], []
    for i in ids:
        if i == eos:
            docs.append(dataset.tokenizer.decode(current))
            current = []
        else:
            current.append(i)
    return docs


def quiet_prepare(inputs, out, **kwargs) -> dict:
    return prepare(inputs, out, progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------
# one text file


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_text_file_round_trips_and_splits_by_characters(tmp_path, shakespeare_text, monkeypatch, kind):
    # Tiny read pieces force many cuts, some of them next to multi-byte characters.
    monkeypatch.setattr(prepare_module, "READ_BYTES", 997)
    text = make_text(shakespeare_text)
    source = tmp_path / "input.txt"
    source.write_bytes(text.encode("utf-8"))  # write_bytes: keep the \r\n as is
    meta = quiet_prepare([source], tmp_path / "out", tokenizer=kind, vocab_size=400)
    ds = TokenDataset(tmp_path / "out")

    split_at = int(len(text) * 0.9)
    assert decode(ds, "train") == text[:split_at]
    assert decode(ds, "val") == text[split_at:]
    assert ds.n_bytes("train") == len(text[:split_at].encode("utf-8"))
    assert ds.n_bytes("val") == len(text[split_at:].encode("utf-8"))
    assert ds.tokenizer.eos_id not in ds.split("train").tolist()  # one document: no separators
    assert meta["tokenizer"]["kind"] == kind
    assert meta == ds.meta
    for split in ("train", "val"):
        assert ds.n_tokens(split) == len(ds.split(split)) > 0


@pytest.mark.parametrize("suffix", [".txt.gz", ".txt.xz"])
def test_compressed_text_prepares_exactly_like_the_plain_file(tmp_path, shakespeare_text, suffix):
    import gzip
    import lzma

    text = shakespeare_text[:30000] + "\né漢🙂\n"
    plain, packed = tmp_path / "input.txt", tmp_path / f"input{suffix}"
    plain.write_text(text, encoding="utf-8")
    packed.write_bytes((gzip.compress if suffix.endswith("gz") else lzma.compress)(text.encode("utf-8")))
    quiet_prepare([plain], tmp_path / "plain", tokenizer="char")
    quiet_prepare([packed], tmp_path / "packed", tokenizer="char")
    for split in ("train", "val"):
        assert (tmp_path / "plain" / f"{split}.bin").read_bytes() == (tmp_path / "packed" / f"{split}.bin").read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(packed.read_bytes()[: len(packed.read_bytes()) // 2])
    with pytest.raises(GptkitError, match="could not be decompressed"):
        quiet_prepare([truncated], tmp_path / "truncated", tokenizer="char")


def test_bundled_corpus_split_is_nanogpts_90_10_character_split(tmp_path, shakespeare_text):
    meta = quiet_prepare(["tiny_shakespeare"], tmp_path / "shakespeare")
    ds = TokenDataset(tmp_path / "shakespeare")
    n = len(shakespeare_text)
    assert decode(ds, "val") == shakespeare_text[int(n * 0.9):]
    assert decode(ds, "train") == shakespeare_text[:int(n * 0.9)]
    assert meta["sources"] == ["bundled:tiny_shakespeare"]
    assert meta["split_rule"] == "characters"


def test_bundled_corpus_path_is_inside_the_package_and_unknown_names_list_the_known_ones():
    path = bundled_corpus_path()
    assert path.is_file() and Path(prepare_module.__file__).parent in path.parents
    assert "shared" not in path.parts
    with pytest.raises(GptkitError, match="tiny_shakespeare"):
        bundled_corpus_path("no_such_corpus")


def test_reading_in_pieces_never_splits_a_character(tmp_path):
    text = "é漢🙂" * 500  # no newlines at all: pieces must be cut between characters
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(read_text(path, read_bytes=10))
    assert len(pieces) > 100
    assert "".join(t for t, _ in pieces) == text
    assert all(raw.decode("utf-8") == t for t, raw in pieces)


# ------------------------------------------------------------------------------------------------
# many documents


def test_directory_of_documents_each_ends_with_eos_and_lands_in_one_split(tmp_path, shakespeare_text):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / ".hidden").mkdir()
    docs = [shakespeare_text[i * 500:(i + 1) * 500] + f" ({i}, 🙂)" for i in range(30)]
    for i, doc in enumerate(docs):
        (corpus / ("sub" if i % 2 else ".") / f"doc{i:02d}.txt").write_text(doc)
    (corpus / "empty.txt").write_text("")  # no text, no document
    (corpus / "notes.md").write_text("not a corpus file")
    (corpus / ".hidden" / "skip.txt").write_text("hidden files are skipped")
    meta = quiet_prepare([corpus], tmp_path / "out", val_fraction=0.3)
    ds = TokenDataset(tmp_path / "out")

    train, val = documents(ds, "train"), documents(ds, "val")
    assert sorted(train + val) == sorted(docs)
    assert val and train
    assert meta["splits"]["train"]["n_documents"] == len(train)
    assert meta["splits"]["val"]["n_documents"] == len(val)
    assert ds.n_bytes("val") == sum(len(d.encode("utf-8")) for d in val)
    assert meta["n_files"] == 31 and meta["split_rule"] == "document_hash"


def test_jsonl_with_custom_text_field(tmp_path):
    docs = [f"document {i}: {'é' * (i % 5)} {'word ' * i}" for i in range(40)]
    lines = [json.dumps({"id": i, "content": d}) for i, d in enumerate(docs)]
    lines.insert(3, json.dumps({"id": "empty", "content": ""}))  # skipped
    lines.insert(7, "   ")  # blank line: skipped
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    quiet_prepare([path], tmp_path / "out", tokenizer="bpe", vocab_size=300, text_field="content")
    ds = TokenDataset(tmp_path / "out")
    assert sorted(documents(ds, "train") + documents(ds, "val")) == sorted(docs)


def test_hash_split_sends_about_val_fraction_of_documents_to_val(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc number {i}"}) + "\n" for i in range(400)))
    meta = quiet_prepare([path], tmp_path / "out", val_fraction=0.25)
    assert 60 <= meta["splits"]["val"]["n_documents"] <= 140


def test_last_document_goes_to_val_when_the_hash_leaves_val_empty(tmp_path):
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps({"text": "first doc"}) + "\n" + json.dumps({"text": "second doc"}) + "\n")
    quiet_prepare([path], tmp_path / "out", val_fraction=1e-12)
    ds = TokenDataset(tmp_path / "out")
    assert documents(ds, "train") == ["first doc"]
    assert documents(ds, "val") == ["second doc"]


def test_preparing_twice_gives_identical_token_files(tmp_path, shakespeare_text):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"{i}.txt").write_text(shakespeare_text[i * 700:(i + 1) * 700])
    for out in ("a", "b"):
        quiet_prepare([corpus], tmp_path / out, tokenizer="bpe", vocab_size=350)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # Preparing again into an existing dataset replaces it.
    quiet_prepare([corpus / "0.txt"], tmp_path / "a")
    assert TokenDataset(tmp_path / "a").meta["split_rule"] == "characters"


# ------------------------------------------------------------------------------------------------
# token width


def test_dtype_is_uint16_until_ids_need_more_bits(tmp_path):
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32
    text = "hello world\n" * 50
    (tmp_path / "t.txt").write_text(text)
    quiet_prepare([tmp_path / "t.txt"], tmp_path / "small")
    assert TokenDataset(tmp_path / "small").split("train").dtype == np.uint16

    big = Tokenizer.train_char([text])
    big.hf.add_tokens([f"<extra{i}>" for i in range(65536)])  # ids beyond uint16
    (tmp_path / "big_tok").mkdir()
    big.save(tmp_path / "big_tok")
    meta = quiet_prepare([tmp_path / "t.txt"], tmp_path / "big", tokenizer=tmp_path / "big_tok")
    ds = TokenDataset(tmp_path / "big")
    assert meta["dtype"] == "uint32" and ds.split("train").dtype == np.uint32
    assert decode(ds, "train") + decode(ds, "val") == text


# ------------------------------------------------------------------------------------------------
# TokenDataset


def test_batch_shapes_shift_and_determinism(prepared_char):
    ds = TokenDataset(prepared_char)
    x, y = ds.batch("train", 4, 16, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    train_text = decode(ds, "train")
    for row_x, row_y in zip(x, y):  # each row is a real window of the split
        assert ds.tokenizer.decode(row_x.tolist() + [int(row_y[-1])]) in train_text
    x2, y2 = ds.batch("train", 4, 16, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = ds.batch("train", 4, 16, torch.Generator().manual_seed(2))
    assert not torch.equal(x, x3)
    with pytest.raises(GptkitError, match="block"):
        ds.batch("val", 2, ds.n_tokens("val"), torch.Generator())


@pytest.mark.parametrize("block_size,batch_size", [(7, 3), (64, 5), (1, 1000)])
def test_eval_windows_predict_every_token_but_the_first_exactly_once(prepared_char, block_size, batch_size):
    ds = TokenDataset(prepared_char)
    data = torch.from_numpy(ds.split("val").astype(np.int64))
    batches = list(ds.iter_eval_windows("val", block_size, batch_size))
    assert all(x.shape == y.shape and x.shape[0] <= batch_size and x.shape[1] <= block_size for x, y in batches)
    assert torch.equal(torch.cat([y.flatten() for _, y in batches]), data[1:])
    assert torch.equal(torch.cat([x.flatten() for x, _ in batches]), data[:-1])


def test_dataset_errors_name_the_fix(tmp_path, prepared_char):
    with pytest.raises(GptkitError, match="gptkit prepare"):
        TokenDataset(tmp_path)
    with pytest.raises(GptkitError, match="does not exist"):
        TokenDataset(tmp_path / "missing")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in prepared_char.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "val.bin").write_bytes((copy / "val.bin").read_bytes()[:-2])
    with pytest.raises(GptkitError, match="truncated"):
        TokenDataset(copy).split("val")


def test_dataset_pickles_without_copying_its_memory_maps(prepared_char):
    import pickle

    ds = TokenDataset(prepared_char)
    ds.split("train")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._arrays == {} and np.array_equal(clone.split("train"), ds.split("train"))


# ------------------------------------------------------------------------------------------------
# bad input


def bad_input_cases(tmp: Path) -> dict[str, tuple[list, dict, str]]:
    """name -> (inputs, prepare kwargs, regex the message must match); every message names a file."""
    (tmp / "empty.txt").write_text("")
    (tmp / "binary.bin").write_bytes(b"abc\x00\x01\x02" * 10)
    (tmp / "latin1.txt").write_bytes("hello café\n".encode("latin-1"))
    (tmp / "text.txt").write_text("some text\n" * 20)
    (tmp / "bad.jsonl").write_text('{"text": "ok"}\n{"text": nope}\n')
    (tmp / "nofield.jsonl").write_text('{"body": "x", "title": "y"}\n')
    (tmp / "a_file").write_text("x")
    (tmp / "occupied").mkdir()
    (tmp / "occupied" / "precious.txt").write_text("x")
    return {
        "missing": ([tmp / "nope.txt"], {}, r"nope\.txt does not exist"),
        "empty": ([tmp / "empty.txt"], {}, r"empty\.txt is empty"),
        "binary": ([tmp / "binary.bin"], {}, r"binary\.bin is not UTF-8 text: NUL byte at byte offset 3"),
        "latin1": ([tmp / "latin1.txt"], {}, r"latin1\.txt is not UTF-8 text: invalid byte 0xe9 at byte offset 9"),
        "not json": ([tmp / "bad.jsonl"], {}, r"bad\.jsonl, line 2 is not JSON"),
        "no field": ([tmp / "nofield.jsonl"], {}, r"nofield\.jsonl, line 1 has no \"text\" field.*'body', 'title'"),
        "vocab too small": ([tmp / "text.txt"], {"tokenizer": "bpe", "vocab_size": 10}, r"vocab-size 10"),
        "unknown tokenizer": ([tmp / "text.txt"], {"tokenizer": tmp / "nope.json"}, r"nope\.json"),
        "out is a file": ([tmp / "text.txt"], {"out": tmp / "a_file"}, r"a_file is a file"),
        "out is occupied": ([tmp / "text.txt"], {"out": tmp / "occupied"}, r"occupied is a non-empty directory"),
        "val_fraction 0": ([tmp / "text.txt"], {"val_fraction": 0.0}, r"val-fraction"),
        "val_fraction 1": ([tmp / "text.txt"], {"val_fraction": 1.0}, r"val-fraction"),
        "one document": ([tmp / "text.txt", tmp / "empty.txt"], {}, r"text\.txt.*1 document"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "latin1", "not json", "no field", "vocab too small",
                                  "unknown tokenizer", "out is a file", "out is occupied", "val_fraction 0",
                                  "val_fraction 1", "one document"])
def test_bad_input_raises_a_clear_error(tmp_path, case):
    inputs, kwargs, pattern = bad_input_cases(tmp_path)[case]
    out = kwargs.pop("out", tmp_path / "out")
    with pytest.raises(GptkitError, match=pattern):
        quiet_prepare(inputs, out, **kwargs)
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "occupied" / "precious.txt").exists()


def test_a_failed_write_leaves_no_dataset_behind(tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text("some text\n" * 20)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C halfway

    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "write_tokens", crash)
        with pytest.raises(KeyboardInterrupt):
            quiet_prepare([tmp_path / "t.txt"], tmp_path / "out")
    # No dataset, half or whole: only the hidden work directory that --resume continues from.
    assert sorted(os.listdir(tmp_path)) == [".out.prepare", "t.txt"]
    quiet_prepare([tmp_path / "t.txt"], tmp_path / "out")  # without --resume: starts over, cleans up
    assert sorted(os.listdir(tmp_path)) == ["out", "t.txt"]
