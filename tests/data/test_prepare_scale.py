"""`gptkit prepare` at scale: Parquet input, worker processes, resuming after a kill, progress."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gptkit.data.prepare as prepare_module
from gptkit.data import TokenDataset
from gptkit.data.prepare import DATASET_FILES, prepare
from gptkit.data.resume import PROGRESS_FILE, work_dir_for
from gptkit.errors import GptkitError


# Multi-byte characters on purpose: pieces are cut by bytes, tokens by characters.
UNICODE = " naïve café, 漢字, 🙂\n"


def quiet_prepare(inputs, out, **kwargs) -> dict:
    return prepare(inputs, out, progress=False, **kwargs)


def documents(shakespeare_text: str, n: int, size: int = 700) -> list[str]:
    """n different documents of about `size` characters (slices of Shakespeare, wrapping around)."""
    text = shakespeare_text * 2
    return [f"[{i}]{UNICODE}" + text[(i * 3001) % len(shakespeare_text):][:size] for i in range(n)]


def write_parquet(path: Path, columns: dict, row_group_size: int = 7) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def dataset_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in DATASET_FILES}


@pytest.fixture
def mixed_corpus(tmp_path, shakespeare_text) -> Path:
    """A directory of text files, a .jsonl and a .parquet file: every kind of source."""
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    docs = documents(shakespeare_text, 60)
    for i, doc in enumerate(docs[:30]):
        (corpus / ("sub" if i % 3 else ".") / f"doc{i:02d}.txt").write_text(doc)
    (corpus / "rows.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[30:45]))
    write_parquet(corpus / "rows.parquet", {"text": docs[45:]})
    return corpus


# ------------------------------------------------------------------------------------------------
# Parquet


def test_parquet_rows_are_documents_like_jsonl_lines(tmp_path, shakespeare_text, monkeypatch):
    monkeypatch.setattr(prepare_module, "READ_BYTES", 2000)  # record batches of a few rows: many batches
    docs = documents(shakespeare_text, 80)
    # Nulls and empty strings hold no document, in Parquet as in jsonl (which has no nulls of type string).
    with_gaps = [x for d in docs for x in (d, None if len(d) % 2 else "")]
    write_parquet(tmp_path / "docs.parquet", {"id": list(range(len(with_gaps))), "body": with_gaps})
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    for name in ("docs.parquet", "docs.jsonl"):
        quiet_prepare([tmp_path / name], tmp_path / name.replace(".", "_"), tokenizer="bpe", vocab_size=300,
                      text_field="body")
    from_parquet, from_jsonl = TokenDataset(tmp_path / "docs_parquet"), TokenDataset(tmp_path / "docs_jsonl")
    assert from_parquet.meta["splits"] == from_jsonl.meta["splits"]
    assert from_parquet.meta["splits"]["train"]["n_documents"] + from_parquet.meta["splits"]["val"]["n_documents"] == 80
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "docs_parquet" / name).read_bytes() == (tmp_path / "docs_jsonl" / name).read_bytes()


@pytest.mark.parametrize("column_type", [pa.large_string(), pa.dictionary(pa.int32(), pa.string())])
def test_parquet_accepts_every_kind_of_string_column(tmp_path, column_type):
    docs = [f"row {i} {'é' * i}" for i in range(30)]
    column = pa.array(docs).cast(column_type) if not pa.types.is_dictionary(column_type) \
        else pa.array(docs).dictionary_encode()
    pq.write_table(pa.table({"text": column}), tmp_path / "t.parquet")
    meta = quiet_prepare([tmp_path / "t.parquet"], tmp_path / "out")
    assert sum(s["n_documents"] for s in meta["splits"].values()) == 30


def parquet_error_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    write_parquet(tmp / "cols.parquet", {"id": [1, 2], "content": ["a", "b"]})
    write_parquet(tmp / "ints.parquet", {"text": [1, 2]})
    (tmp / "fake.parquet").write_bytes(b"PAR1 this is not really parquet")
    good = write_parquet(tmp / "good.parquet", {"text": [f"document {i} " * 50 for i in range(100)]}).read_bytes()
    corrupt = bytearray(good)
    corrupt[4:200] = bytes(196)  # the first data pages, zeroed; the footer still reads
    (tmp / "corrupt.parquet").write_bytes(bytes(corrupt))
    return {
        "missing column": (tmp / "cols.parquet",
                           r"cols\.parquet has no column \"text\"; its columns are \['id', 'content'\]"),
        "not strings": (tmp / "ints.parquet", r"ints\.parquet: column \"text\" holds int64, expected strings"),
        "not parquet": (tmp / "fake.parquet", r"fake\.parquet is not a readable Parquet file"),
        "corrupt": (tmp / "corrupt.parquet", r"corrupt\.parquet is not a readable Parquet file"),
    }


@pytest.mark.parametrize("case", ["missing column", "not strings", "not parquet", "corrupt"])
def test_bad_parquet_raises_a_one_line_error(tmp_path, case):
    path, pattern = parquet_error_cases(tmp_path)[case]
    with pytest.raises(GptkitError, match=pattern) as error:
        quiet_prepare([path], tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists() and not work_dir_for(tmp_path / "out").exists()


def test_missing_parquet_column_through_the_cli(tmp_path, run_cli):
    write_parquet(tmp_path / "data.parquet", {"id": [1], "content": ["some text"]})
    proc = run_cli("prepare", "--input", str(tmp_path / "data.parquet"), "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gptkit: error:") and "no column \"text\"" in last and "['id', 'content']" in last


# ------------------------------------------------------------------------------------------------
# worker processes


@pytest.mark.parametrize("inputs", ["mixed directory", "one text file"])
def test_worker_processes_write_the_same_bytes_as_one_process(tmp_path, mixed_corpus, shakespeare_text,
                                                                monkeypatch, inputs):
    monkeypatch.setattr(prepare_module, "POOL_MIN_BYTES", 0)  # use processes even for this small input
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 3000)  # many batches, several in flight per worker
    if inputs == "one text file":
        monkeypatch.setattr(prepare_module, "READ_BYTES", 997)  # cuts next to multi-byte characters
        (tmp_path / "one.txt").write_text("".join(documents(shakespeare_text, 40)))
        source = tmp_path / "one.txt"
    else:
        source = mixed_corpus
    metas = [quiet_prepare([source], tmp_path / f"w{n}", tokenizer="bpe", vocab_size=300, workers=n) for n in (1, 2)]
    assert metas[0] == metas[1]
    assert dataset_bytes(tmp_path / "w1") == dataset_bytes(tmp_path / "w2")


# ------------------------------------------------------------------------------------------------
# resume


class Interrupt:
    """Stand-in for encode_batch that presses Ctrl-C on the `at`-th batch."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0
        self.encode_batch = prepare_module.encode_batch

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.encode_batch(*args, **kwargs)


def forbid(name: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"a resumed prepare must not call {name} again")
    return fail


@pytest.mark.parametrize("inputs", ["mixed directory", "one text file", "one jsonl file"])
def test_interrupted_prepare_resumes_to_identical_files(tmp_path, mixed_corpus, shakespeare_text, monkeypatch, inputs):
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 2000)
    monkeypatch.setattr(prepare_module, "READ_BYTES", 997)
    docs = documents(shakespeare_text, 60)
    source = {"mixed directory": mixed_corpus, "one text file": tmp_path / "one.txt",
              "one jsonl file": tmp_path / "one.jsonl"}[inputs]
    (tmp_path / "one.txt").write_text("".join(docs))
    (tmp_path / "one.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    options = dict(tokenizer="bpe", vocab_size=300, workers=1)
    quiet_prepare([source], tmp_path / "clean", **options)

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "encode_batch", Interrupt(at=6))
        with pytest.raises(KeyboardInterrupt):
            quiet_prepare([source], out, **options)
    progress = json.loads((work_dir_for(out) / PROGRESS_FILE).read_text())
    assert not out.exists() and progress["plan_saved"] and progress["tokenizer_saved"]
    assert progress["source"] > 0 or progress["pieces"] > 0  # five batches were written...
    assert progress["splits"]["train"]["n_tokens"] > 0
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "scan", forbid("scan"))  # ...and the scan and the tokenizer are kept
        patch.setattr(prepare_module, "train_tokenizer", forbid("train_tokenizer"))
        quiet_prepare([source], out, resume=True, **options)
    assert dataset_bytes(out) == dataset_bytes(tmp_path / "clean")
    assert not work_dir_for(out).exists()


def test_resume_refuses_other_inputs_or_options_and_a_fresh_run_starts_over(tmp_path, mixed_corpus, monkeypatch):
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 2000)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "encode_batch", Interrupt(at=3))
        with pytest.raises(KeyboardInterrupt):
            quiet_prepare([mixed_corpus], out, workers=1)
    with pytest.raises(GptkitError, match=r"different inputs or options \(val_fraction 0\.1 -> 0\.2\)"):
        quiet_prepare([mixed_corpus], out, resume=True, val_fraction=0.2)
    (mixed_corpus / "doc00.txt").write_text("changed since")
    with pytest.raises(GptkitError, match=r"the input files: 32 then, 32 now, or some were renamed, resized"):
        quiet_prepare([mixed_corpus], out, resume=True)
    assert work_dir_for(out).exists(), "a refused resume must keep the work for the right command"
    quiet_prepare([mixed_corpus], out, workers=1)  # no --resume: starts over
    assert not work_dir_for(out).exists() and TokenDataset(out).n_tokens("train") > 0
    with pytest.raises(GptkitError, match=r"nothing to resume.*is a finished dataset already"):
        quiet_prepare([mixed_corpus], out, resume=True)


def _group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group, from /proc."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the worker processes")
def test_kill_9_mid_tokenisation_then_resume_gives_identical_files(tmp_path, shakespeare_text):
    # Big enough (> POOL_MIN_BYTES) that the CLI tokenises in worker processes, and that there are
    # dozens of batches left when the first one is recorded.
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = shakespeare_text * 2
    for i in range(240):
        (corpus / f"doc{i:03d}.txt").write_text(f"[{i}]{UNICODE}" + text[(i * 4001) % len(shakespeare_text):][:40_000])
    assert sum(f.stat().st_size for f in corpus.iterdir()) > prepare_module.POOL_MIN_BYTES
    out, work = tmp_path / "out", work_dir_for(tmp_path / "out")
    command = [sys.executable, "-m", "gptkit", "prepare", "--input", str(corpus), "--out", str(out), "--workers", "2"]

    # start_new_session: the test can find (and, if all else fails, end) the workers by process group.
    # Output goes to a file, not a pipe: workers inherit stderr, and a pipe a stray worker holds open
    # would block reading it forever.
    log = tmp_path / "killed.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=log_file, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                progress = json.loads((work / PROGRESS_FILE).read_text())
            except (OSError, ValueError):
                progress = {}
            if progress.get("source", 0) > 0:  # some input files are fully tokenised
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"prepare ended before it could be killed:\n{log.read_text()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15  # the orphaned workers notice their parent is gone and exit
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(proc.pid), "worker processes outlived the killed prepare"
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)

    killed_at = json.loads((work / PROGRESS_FILE).read_text())
    assert not out.exists() and 0 < killed_at["source"] < 240
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the unfinished prepare" in resumed.stderr
    bars = resumed.stderr.replace("\r", "\n").splitlines()
    assert not any(line.startswith(("scan", "train tokenizer")) for line in bars)  # both kept from the first run
    assert not work.exists()

    quiet_prepare([corpus], tmp_path / "clean", workers=1)  # uninterrupted, one process
    assert dataset_bytes(out) == dataset_bytes(tmp_path / "clean")


# ------------------------------------------------------------------------------------------------
# progress


def test_progress_bar_shows_bytes_and_tokens_per_second(tmp_path, mixed_corpus, capsys):
    prepare([mixed_corpus], tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    tokenize = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("tokenize")]
    assert tokenize and "B/s" in tokenize[-1] and "tokens/s" in tokenize[-1], err
