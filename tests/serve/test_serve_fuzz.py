"""Fuzzing `gptkit serve` from its own OpenAPI document (schemathesis): no input may cause a 5xx.

Schemathesis generates requests for every operation in /openapi.json, valid ones and ones that break
the schema (wrong types, missing fields, out-of-range numbers, odd strings), and sends them to a live
server on loopback. Every response must be a deliberate answer (2xx or an OpenAI-shaped 4xx), never a
server error, and the server must still be healthy at the end.

The default run is derandomised so that CI is reproducible; to search further with fresh random
inputs, run `GPTKIT_FUZZ_EXAMPLES=500 GPTKIT_FUZZ_RANDOM=1 pytest tests/serve/test_serve_fuzz.py`.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from gptkit.serve.app import create_app  # noqa: E402
from gptkit.serve.engine import EngineConfig  # noqa: E402
from gptkit.tokenizer import Tokenizer  # noqa: E402
from test_serve import make_model, running  # noqa: E402

EXAMPLES_PER_OPERATION = int(os.environ.get("GPTKIT_FUZZ_EXAMPLES", 30))  # per operation and mode (valid / invalid)
RANDOM = os.environ.get("GPTKIT_FUZZ_RANDOM") == "1"


@pytest.fixture(scope="module")
def base(shakespeare_text):
    tokenizer = Tokenizer.train_char([shakespeare_text[:20000]])
    model = make_model(tokenizer.vocab_size, block_size=64)
    app = create_app(model, tokenizer, model_name="fuzz", engine_config=EngineConfig(max_batch=4, max_queue=64,
                                                                                     request_timeout=30))
    with running(app) as url:
        yield url


def test_no_input_makes_the_server_fail(base):
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/tokenize"}
    failures: list[str] = []
    statuses: Counter = Counter()

    for operation, mode in itertools.product(operations, list(schemathesis.GenerationMode)):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=not RANDOM,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            if isinstance(case.body, dict) and isinstance(case.body.get("max_tokens"), int):
                case.body["max_tokens"] = min(case.body["max_tokens"], 8)  # keep generation short
            response = case.call(base_url=base, timeout=60)
            statuses[response.status_code // 100] += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}\n"
                                f"  body: {str(case.body)[:300]}")

        try:
            check()
        except Unsatisfiable:  # nothing to break in an operation without parameters or body
            assert mode == schemathesis.GenerationMode.NEGATIVE
    assert not failures, "\n".join(failures[:10])
    assert statuses[2] > 0 and statuses[4] > 0, statuses  # both valid and invalid requests were sent
    assert httpx.get(f"{base}/health").status_code == 200
