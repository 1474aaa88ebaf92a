"""The README's main job, exactly as a new user runs it (slow: a full default training run)."""

import json

import pytest


@pytest.mark.slow
def test_default_pretrain_then_generate(tmp_path, run_cli):
    proc = run_cli("pretrain", cwd=tmp_path, timeout=900)
    run = tmp_path / "out" / "pretrain" / "tiny"
    assert "--- sample ---" in proc.stdout
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "val_bpb" in line]
    assert evals[-1]["val_bpb"] < evals[0]["val_bpb"]
    gen = run_cli("generate", "--checkpoint", "out/pretrain/tiny", "--prompt", "ROMEO:", "--max-tokens", "200",
                  cwd=tmp_path)
    assert gen.stdout.startswith("ROMEO:") and len(gen.stdout) > 100
