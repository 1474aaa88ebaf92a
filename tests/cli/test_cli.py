"""The command line as a user meets it: the README's commands, and clear errors for bad input."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, prepared_char, run_cli, small_model_flags):
    out = tmp_path_factory.mktemp("cli") / "run"
    run_cli("pretrain", "--data", str(prepared_char), "--out", str(out), "--max-iters", "30",
            "--eval-interval", "15", *small_model_flags)
    return out


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("gptkit: error:"), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in {proc.stderr!r}"


def test_prepare_then_pretrain_then_generate_then_eval(tmp_path, small_text_file, run_cli, small_model_flags):
    data = tmp_path / "data"
    proc = run_cli("prepare", "--input", str(small_text_file), "--out", str(data), "--tokenizer", "bpe",
                   "--vocab-size", "300")
    assert "train" in proc.stdout and (data / "train.bin").is_file()
    out = tmp_path / "run"
    run_cli("pretrain", "--data", str(data), "--out", str(out), "--max-iters", "10", "--eval-interval", "10",
            *[f for f in small_model_flags if f != "0"][:-1], "--sample-tokens", "20")
    gen = run_cli("generate", "--checkpoint", str(out), "--prompt", "ROMEO:", "--max-tokens", "20",
                  "--temperature", "0", "--no-stream")
    assert gen.stdout.startswith("ROMEO:") and len(gen.stdout) > len("ROMEO:")
    again = run_cli("generate", "--checkpoint", str(out / "best"), "--prompt", "ROMEO:", "--max-tokens", "20",
                    "--temperature", "0")
    assert again.stdout == gen.stdout, "greedy decoding must not depend on streaming or the path form"
    result = json.loads(run_cli("eval", "--checkpoint", str(out)).stdout)
    assert result["bits_per_byte"] > 0 and result["perplexity"] == pytest.approx(2.718281828 ** result["loss"], rel=1e-6)
    on_file = json.loads(run_cli("eval", "--checkpoint", str(out), "--data", str(small_text_file)).stdout)
    assert on_file["tokens"] > result["tokens"]
    in_bf16 = json.loads(run_cli("eval", "--checkpoint", str(out), "--dtype", "bfloat16").stdout)
    assert in_bf16["tokens"] == result["tokens"]
    assert in_bf16["loss"] == pytest.approx(result["loss"], rel=0.02) and in_bf16["loss"] != result["loss"]


def test_generate_samples_n_and_stops(trained_run, run_cli):
    proc = run_cli("generate", "--checkpoint", str(trained_run), "--prompt", "A", "--max-tokens", "30",
                   "--n", "2", "--seed", "3", "--stop", "\n")
    samples = [s for s in proc.stdout.split("--- sample ") if s]
    assert len(samples) == 2
    for s in samples:
        body = s.split("---\n", 1)[1]
        assert "\n" not in body.rstrip("\n")


def test_ctrl_c_saves_before_exiting(tmp_path, prepared_char, small_model_flags):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "pretrain", "--data", str(prepared_char), "--out", str(out),
                             "--max-iters", "100000", "--eval-interval", "100000", *small_model_flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "log.jsonl").exists() or not (out / "log.jsonl").read_text():
        assert time.time() < deadline and proc.poll() is None, "training never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert 0 < state["step"] < 100000


@pytest.mark.parametrize("args, needles", [
    (["pretrain", "--preset", "gpt5"], ["unknown preset 'gpt5'", "tiny"]),
    (["prepare", "--input", "missing.txt", "--out", "x"], ["missing.txt"]),
    (["prepare", "--input", "{text}", "--out", "{tmp}/p", "--tokenizer", "bpe", "--vocab-size", "10"], ["vocab-size"]),
    (["generate", "--checkpoint", "{tmp}/nothing"], ["does not exist"]),
    (["generate", "--checkpoint", "{tmp}"], ["not a checkpoint"]),
    (["eval", "--checkpoint", "{tmp}/nothing"], ["does not exist"]),
    (["frobnicate"], ["unknown command"]),
    (["pretrain", "--resume", "--out", "{tmp}/none"], ["nothing to resume"]),
    (["pretrain", "--config", "{tmp}/missing.yaml"], ["missing.yaml"]),
])
def test_bad_input_gives_one_clear_message(tmp_path, small_text_file, args, needles, run_cli):
    args = [a.format(tmp=tmp_path, text=small_text_file) for a in args]
    assert_clean_error(run_cli(*args, check=False), *needles)


@pytest.mark.parametrize("flags, needle", [
    (["--temperature", "-1"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-k", "0"], "top_k"),
    (["--max-tokens", "-5"], "max_tokens"),
    (["--n", "0"], "n"),
    (["--prompt", "x" * 40], "context"),
])
def test_bad_sampling_parameters_are_rejected(trained_run, flags, needle, run_cli):
    assert_clean_error(run_cli("generate", "--checkpoint", str(trained_run), *flags, check=False), needle)


def test_missing_checkpoint_file_is_named(tmp_path, trained_run, run_cli):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_run / "best", broken)
    (broken / "tokenizer.json").unlink()
    assert_clean_error(run_cli("generate", "--checkpoint", str(broken), check=False), "tokenizer.json")


def test_bad_yaml_recipe_key_is_named(tmp_path, run_cli):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_iters: 5\nlearning_rat: 0.1\n")
    assert_clean_error(run_cli("pretrain", "--config", str(recipe), check=False), "learning_rat")


def test_prepared_data_is_reused_until_the_corpus_changes(tmp_path, shakespeare_text):
    from gptkit.data.prepare import resolve_dataset

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_text[:5000])
    first = resolve_dataset(str(corpus), tmp_path / "data", tokenizer="char", vocab_size=0)
    stamp = (tmp_path / "data" / "meta.json").stat().st_mtime_ns
    again = resolve_dataset(str(corpus), tmp_path / "data", tokenizer="char", vocab_size=0)
    assert again.n_tokens("train") == first.n_tokens("train")
    assert (tmp_path / "data" / "meta.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    corpus.write_text(shakespeare_text[:9000])  # the same name, other text: prepared afresh
    changed = resolve_dataset(str(corpus), tmp_path / "data", tokenizer="char", vocab_size=0)
    assert changed.n_tokens("train") > first.n_tokens("train")


def test_generate_renders_conditions_before_the_prompt(trained_run, tmp_path, run_cli):
    from gptkit.prompting.conditions import render_conditions

    conditions = {"tone": "dry", "rules": ["hush"]}  # short: the test model's context is 32 characters
    recipe = tmp_path / "conditions.yaml"
    recipe.write_text("tone: dry\nrules:\n  - hush\n")
    common = ["generate", "--checkpoint", str(trained_run), "--max-tokens", "12", "--temperature", "0", "--no-stream"]
    by_hand = run_cli(*common, "--prompt", render_conditions(conditions, "A:")).stdout
    assert by_hand.startswith("Tone: dry\nhush.\n\nA:")
    assert run_cli(*common, "--prompt", "A:", "--conditions", str(recipe)).stdout == by_hand
    assert run_cli(*common, "--prompt", "A:", "--conditions", "{tone: dry, rules: [hush]}").stdout == by_hand
    bad = run_cli(*common, "--prompt", "A:", "--conditions", "{mood: sad}", check=False)
    assert bad.returncode == 2 and "unknown condition key" in bad.stderr and "Traceback" not in bad.stderr


def test_a_closed_pipe_ends_generate_quietly(trained_run):
    # `gptkit generate ... | head -c 5`: the reader leaves after five bytes; no traceback may follow
    command = (f"{sys.executable} -m gptkit generate --checkpoint {trained_run} --prompt A --max-tokens 200 "
               "--temperature 0.8 | head -c 5")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=120)
    assert len(proc.stdout) == 5  # bytes: head may cut a character in two
    assert b"Traceback" not in proc.stderr and b"Error" not in proc.stderr, proc.stderr.decode(errors="replace")
