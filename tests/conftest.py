import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_cli(*args: str, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m gptkit ARGS` in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "gptkit", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"gptkit {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def run_cli():
    """`run_cli(*args, check=True, timeout=300, **subprocess_kwargs)`: run `python -m gptkit ARGS` in a fresh process.

    Raises AssertionError (with stdout and stderr) on a non-zero exit unless `check=False`.
    """
    return _run_cli


@pytest.fixture(scope="session")
def small_model_flags() -> tuple[str, ...]:
    """`gptkit pretrain` flags for a tiny model, so end-to-end runs stay fast.

    A tuple, so that no test can change what the others get.
    """
    return ("--model.n-layer", "1", "--model.n-head", "2", "--model.n-embd", "32",
            "--model.block-size", "32", "--batch-size", "4", "--sample-tokens", "0")


# Small, fixed-size corpora keep end-to-end tests fast; they come from the bundled corpus.
@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    from gptkit.data.prepare import bundled_corpus_path

    return bundled_corpus_path("tiny_shakespeare").read_text()


@pytest.fixture(scope="session")
def small_text_file(tmp_path_factory, shakespeare_text) -> Path:
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(shakespeare_text[:60_000])
    return path


@pytest.fixture(scope="session")
def prepared_char(tmp_path_factory, small_text_file) -> Path:
    from gptkit.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "char"
    prepare([str(small_text_file)], out, tokenizer="char")
    return out
