"""lm-evaluation-harness against `gptkit serve`, as a vLLM user would run it: local tasks, no download.

`lm_eval --model local-completions --model_args base_url=.../v1/completions,model=NAME,tokenizer_backend=remote`
drives the server through /v1/completions (token-id prompts, echo + logprobs + max_tokens=1 for
loglikelihoods, stop sequences for generation) and /tokenize, /detokenize, /tokenizer_info. The
loglikelihoods it records must equal gptkit's own scoring of the same strings.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402

from gptkit.api import LLM  # noqa: E402
from gptkit.checkpoint import save_checkpoint  # noqa: E402
from gptkit.config import ModelConfig  # noqa: E402
from gptkit.data.labelled import bundled_labelled, read_labelled  # noqa: E402
from gptkit.models.gpt import GPT  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402

MODEL_NAME = "gptkit-tiny"
LOGLIKELIHOOD_TASK = """
task: gptkit_sentiment
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
doc_to_choice: ["negative", "positive"]
doc_to_target: "{{{{target}}}}"
metric_list:
  - metric: acc
"""
GENERATE_TASK = """
task: gptkit_jargon
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: What does {{{{term}}}} mean?\\nA:"
doc_to_target: "{{{{definition}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`gptkit serve` in a subprocess on a free port, with a small random model and a BPE tokenizer."""
    work = tmp_path_factory.mktemp("lm_eval")
    rows = read_labelled(bundled_labelled("sentiment"))
    tokenizer = Tokenizer.train_bpe([" ".join(rows.texts)], 600)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32))
    checkpoint = save_checkpoint(work / "ckpt", model, tokenizer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "gptkit", "serve", "--checkpoint", str(checkpoint),
                               "--port", str(port), "--model-name", MODEL_NAME],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert server.poll() is None, f"gptkit serve exited: {server.stderr.read()}"
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "gptkit serve did not start"
        time.sleep(0.2)
    yield base, checkpoint, work, rows
    server.terminate()
    server.wait(timeout=30)


def run_lm_eval(base: str, work: Path, task: str, limit: int) -> list[dict]:
    out = work / f"results-{task}"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "unused",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
               f"base_url={base}/v1/completions,model={MODEL_NAME},tokenizer_backend=remote,num_concurrent=4",
               "--tasks", task, "--include_path", str(work / "tasks"), "--limit", str(limit),
               "--output_path", str(out), "--log_samples", "--batch_size", "1"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    files = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
    assert files, f"no samples written under {out}"
    return [json.loads(line) for line in Path(files[0]).read_text().splitlines()]


def test_loglikelihood_task_matches_gptkit_scoring(served):
    base, checkpoint, work, rows = served
    data = work / "sentiment.jsonl"
    with data.open("w") as f:
        for text, label in list(zip(rows.texts, rows.row_labels))[:40]:
            f.write(json.dumps({"text": text, "target": int(label == "1")}) + "\n")
    (work / "tasks").mkdir(exist_ok=True)
    (work / "tasks" / "gptkit_sentiment.yaml").write_text(LOGLIKELIHOOD_TASK.format(data=data))
    samples = run_lm_eval(base, work, "gptkit_sentiment", limit=12)
    assert len(samples) == 12
    llm = LLM.load(checkpoint)
    for sample in samples:
        # The harness joins context and choice with its target delimiter, a space.
        context = f"Review: {sample['doc']['text']}\nSentiment:"
        ours = [llm.loglikelihood(context, " " + choice) for choice in ("negative", "positive")]
        theirs = [float(resp[0][0]) for resp in sample["resps"]]  # logged as strings
        assert theirs == pytest.approx(ours, abs=1e-3), sample["doc"]["text"]


def test_generate_until_task_runs_and_stops_at_newline(served):
    base, checkpoint, work, _ = served
    data = work / "jargon.jsonl"
    entries = [json.loads(line) for line in bundled_labelled("jargon").read_text().splitlines()[:10]]
    with data.open("w") as f:
        for entry in entries:
            f.write(json.dumps({"term": entry["term"], "definition": entry["definition"]}) + "\n")
    (work / "tasks").mkdir(exist_ok=True)
    (work / "tasks" / "gptkit_jargon.yaml").write_text(GENERATE_TASK.format(data=data))
    samples = run_lm_eval(base, work, "gptkit_jargon", limit=4)
    assert len(samples) == 4
    llm = LLM.load(checkpoint)
    for sample in samples:
        generated = sample["resps"][0][0]
        assert "\n" not in generated
        prompt = f"Q: What does {sample['doc']['term']} mean?\nA:"
        expected = llm.generate(prompt, max_tokens=8, temperature=0, stop=["\n"])[0]
        assert generated == expected
