"""The work directory of `gptkit prepare`, which makes an interrupted prepare resumable.

A prepare builds its dataset in `.OUT.prepare/`, a hidden sibling of OUT, and renames the finished
files into OUT at the very end (so OUT is never half written). Next to the growing token files the
work directory holds:

  fingerprint.json  what the run was asked to do: its options and a hash of every input file's
                    path, size and modification time. `--resume` refuses a different request.
  plan.npz          the scan's result (which document goes to which split), so a resume skips the scan;
  tokenizer.json    the tokenizer (trained or given), saved before any token is written, so a resume
                    never retrains it;
  progress.json     how far tokenisation got: the input file being read, how many of its pieces are
                    written, and the token/byte/document counts so far. It is replaced atomically
                    (write, then rename) after every batch, and only after the token files are flushed,
                    so the counts never promise bytes the files do not hold.

On `--resume` the token files are cut back to the lengths progress.json records (a killed run may
have written a little more) and tokenisation continues from the recorded piece. The pieces and the
tokens of each piece do not depend on where a run stopped or on how many workers it had, so the
result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gptkit.files import write_atomically
from gptkit.data.dataset import META_FILE, SPLITS
from gptkit.errors import GptkitError, require

FINGERPRINT_FILE = "fingerprint.json"
PROGRESS_FILE = "progress.json"
PLAN_FILE = "plan.npz"
FINGERPRINT_VERSION = 1


def work_dir_for(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.prepare")


def fingerprint(paths: Iterable[Path], options: dict[str, Any]) -> dict[str, Any]:
    """What a prepare reads and how: enough to tell whether a work directory belongs to this request.

    Files are identified by path, size and modification time (hashing their contents would cost
    another pass over the whole corpus).
    """
    files = hashlib.sha256()
    n_files = 0
    for path in paths:
        stat = path.stat()
        files.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        n_files += 1
    return {"version": FINGERPRINT_VERSION, "options": options, "n_files": n_files, "files_sha256": files.hexdigest()}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two fingerprints, in words."""
    if old.get("version") != new["version"]:
        return ["the gptkit version that wrote it"]
    changes = [f"{key} {old['options'].get(key)!r} -> {value!r}" for key, value in new["options"].items()
               if old["options"].get(key) != value]
    if old["files_sha256"] != new["files_sha256"]:
        changes.append(f"the input files: {old['n_files']} then, {new['n_files']} now, or some were renamed, "
                       "resized or modified")
    return changes


@dataclass
class Progress:
    """What is done; saved to progress.json after every step."""

    plan_saved: bool = False
    tokenizer_saved: bool = False
    source: int = 0  # the input file tokenisation is in...
    pieces: int = 0  # ...and how many of its pieces are in the token files
    splits: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s: {"n_tokens": 0, "n_bytes": 0, "n_documents": 0} for s in SPLITS})

    @property
    def n_bytes(self) -> int:
        return sum(s["n_bytes"] for s in self.splits.values())


def _write_json_atomically(path: Path, data: Any) -> None:
    """Write, then rename over the old file: a kill leaves the old or the new version, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


class WorkDir:
    """`.OUT.prepare/`: the unfinished dataset and what is needed to finish it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(cls, out_dir: Path, fingerprint: dict[str, Any], *, resume: bool,
             say: Callable[[str], None]) -> tuple[WorkDir, Progress]:
        """A fresh work directory, or with `resume` the unfinished one (checked against `fingerprint`)."""
        work = cls(work_dir_for(out_dir))
        if resume:
            return work, work._reopen(out_dir, fingerprint, say)
        if work.path.exists():
            say(f"removing the unfinished prepare in {work.path} and starting over "
                "(pass --resume to continue it instead)")
            shutil.rmtree(work.path)
        work.path.mkdir(parents=True)
        _write_json_atomically(work.path / FINGERPRINT_FILE, fingerprint)
        progress = Progress()
        work.save(progress)
        return work, progress

    def _reopen(self, out_dir: Path, fingerprint: dict[str, Any], say: Callable[[str], None]) -> Progress:
        done = f" ({out_dir} is a finished dataset already)" if (out_dir / META_FILE).is_file() else ""
        require(self.path.is_dir(), f"nothing to resume: there is no unfinished prepare for {out_dir} "
                                    f"({self.path} does not exist){done}; drop --resume to prepare from the start")
        try:
            old = json.loads((self.path / FINGERPRINT_FILE).read_text())
            progress = Progress(**json.loads((self.path / PROGRESS_FILE).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise GptkitError(f"cannot resume from {self.path}: it is incomplete or damaged ({e}); "
                              "drop --resume to start over") from None
        changes = _differences(old, fingerprint)
        require(not changes, f"cannot resume the unfinished prepare in {self.path}: it was started with different "
                             f"inputs or options ({'; '.join(changes)}); rerun the original command with --resume, "
                             "or drop --resume to start over")
        done_steps = [name for name, done in (("scan", progress.plan_saved), ("tokenizer", progress.tokenizer_saved))
                      if done]
        say(f"resuming the unfinished prepare in {self.path}: "
            f"{' and '.join(done_steps) + ' done, ' if done_steps else ''}"
            f"{progress.n_bytes / 1e6:,.1f} MB tokenised")
        return progress

    def save(self, progress: Progress) -> None:
        _write_json_atomically(self.path / PROGRESS_FILE, asdict(progress))

    def token_file(self, split: str) -> Path:
        return self.path / f"{split}.bin"

    def cut_token_files(self, progress: Progress, itemsize: int) -> None:
        """Cut the token files back to what progress.json records (a killed run may have written more)."""
        for split in SPLITS:
            path, size = self.token_file(split), progress.splits[split]["n_tokens"] * itemsize
            have = path.stat().st_size if path.is_file() else 0
            require(have >= size, f"cannot resume from {self.path}: {path.name} holds {have} bytes but "
                                  f"{PROGRESS_FILE} records {size}; drop --resume to start over")
            with open(path, "ab") as f:
                f.truncate(size)

    def publish(self, out_dir: Path, names: Iterable[str]) -> None:
        """Move the finished files into `out_dir` atomically (replacing a dataset there), then drop the rest."""

        def move(tmp: Path) -> None:
            for name in names:
                os.replace(self.path / name, tmp / name)

        write_atomically(out_dir, move)
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
