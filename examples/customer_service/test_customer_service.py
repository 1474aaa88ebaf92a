"""The customer-service assistant end to end: the knowledge base readers, BM25 / dense / hybrid retrieval, replies that
cite what they used, "I don't know", follow-up questions, prompts that fit the context, a real `gptkit serve` on
loopback as the backend, the command line and the bad inputs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from assistant import (IDK, Assistant, AssistantConfig, AssistantError, HTTPBackend, KnowledgeBase,  # noqa: E402
                       LocalBackend, bundled_jargon, reciprocal_rank_fusion)
from evaluate import rank_of, retrieval_scores  # noqa: E402

LOGIC_BOMB = "code hidden inside an application that does something destructive when certain conditions are met"


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model pretrained for a few steps on the knowledge base's own text (a real checkpoint, made by the CLI)."""
    work = tmp_path_factory.mktemp("cs")
    corpus = work / "kb.txt"
    corpus.write_text("\n".join(p.indexed_text() for p in bundled_jargon()))
    run = cli("-m", "gptkit", "pretrain", "--data", str(corpus), "--out", str(work / "run"), "--max-iters", "20",
              "--model.n-layer", "1", "--model.n-head", "2", "--model.n-embd", "32", "--model.block-size", "64",
              "--batch-size", "4", "--sample-tokens", "0")
    assert run.returncode == 0, run.stderr
    return work / "run" / "best"


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.load(None)


@pytest.fixture(scope="module")
def local(checkpoint) -> LocalBackend:
    return LocalBackend.load(checkpoint)


@pytest.fixture(scope="module")
def bot(kb, local, tmp_path_factory) -> Assistant:
    return Assistant(kb, local, AssistantConfig(max_tokens=8), cache_dir=tmp_path_factory.mktemp("cache"))


def test_bundled_knowledge_base_has_one_entry_per_term(kb):
    assert len(kb) > 900
    ids = [p.id for p in kb.passages]
    assert len(set(ids)) == len(ids)
    assert kb.by_id("logic-bomb").title == "logic bomb" and "destructive" in kb.by_id("logic-bomb").text


def test_bm25_finds_an_entry_from_a_paraphrase(bot):
    ranked = bot.retrieve(LOGIC_BOMB, k=5, retriever="bm25")
    assert ranked[0][0] == "logic-bomb"
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_reciprocal_rank_fusion_rewards_agreement():
    fused = dict(reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[4] == pytest.approx(1 / 63) and fused[2] == pytest.approx(1 / 62)
    assert max(fused, key=fused.get) == 1
    weighted = dict(reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=10, weights=[1.0, 0.5]))
    assert weighted[3] == pytest.approx(1 / 13 + 0.5 / 11) and weighted[4] == pytest.approx(0.5 / 13)


def test_dense_scores_are_cosines_of_llm_embed_and_hybrid_fuses_both(bot, kb, local):
    dense = bot.retrieve(LOGIC_BOMB, k=5, retriever="dense")
    query = local.llm.embed([LOGIC_BOMB])[0].numpy()
    best = kb.by_id(dense[0][0])
    expected = float(local.llm.embed([best.indexed_text()])[0].numpy() @ query)
    assert dense[0][1] == pytest.approx(expected, abs=1e-4)
    hybrid = dict(bot.retrieve(LOGIC_BOMB, k=10, retriever="hybrid"))
    lexical = [i for i, _ in bot.retrieve(LOGIC_BOMB, k=bot.config.pool, retriever="bm25")]
    semantic = [i for i, _ in bot.retrieve(LOGIC_BOMB, k=bot.config.pool, retriever="dense")]
    ids = [p.id for p in kb.passages]
    expected_fused = reciprocal_rank_fusion([[ids.index(i) for i in lexical], [ids.index(i) for i in semantic]],
                                            bot.config.rrf_k, [1.0, bot.config.dense_weight])
    assert list(hybrid) == [ids[i] for i, _ in expected_fused[:10]]


def test_the_dense_index_is_cached_and_invalidated_by_a_changed_knowledge_base(kb, local, tmp_path):
    first = Assistant(kb, local, cache_dir=tmp_path)
    files = list(tmp_path.glob("dense-*.npy"))
    assert len(files) == 1
    again = Assistant(kb, local, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.dense.vectors, again.dense.vectors)
    smaller = KnowledgeBase(kb.passages[:50], "first 50")
    Assistant(smaller, local, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("dense-*.npy"))) == 2


def test_answer_cites_the_passages_it_was_given_and_says_when_it_does_not_know(bot):
    text, cited = bot.answer(LOGIC_BOMB)
    top = [i for i, _ in bot.retrieve(LOGIC_BOMB, k=bot.config.passages)]
    assert cited and set(cited) <= set(top) and cited[0] == top[0]
    assert all(f"{c}" in text for c in cited)
    text, cited = bot.answer("What is the capital of Australia?")
    assert (text, cited) == (IDK, [])


def test_extractive_reply_quotes_the_best_passage(kb):
    extractive = Assistant(kb, None, AssistantConfig(retriever="bm25", reply="extract"), cache_dir=None)
    text, cited = extractive.answer(LOGIC_BOMB)
    assert cited == ["logic-bomb"] and "Code surreptitiously inserted" in text


def test_a_follow_up_question_leans_on_the_previous_one(kb):
    bot = Assistant(kb, None, AssistantConfig(retriever="bm25", reply="extract"), cache_dir=None)
    follow_up = "and who would do such a thing?"
    assert bot.answer(follow_up) == (IDK, [])
    first, cited = bot.answer(LOGIC_BOMB)
    assert bot.answer(follow_up, history=[(LOGIC_BOMB, first)])[1] == ["logic-bomb"]
    # a new question with nothing pointing back is not merged with the last one
    assert bot.answer("What is the capital of Australia?", history=[(LOGIC_BOMB, first)]) == (IDK, [])


def test_the_prompt_fits_the_context_and_a_long_question_is_cut_with_a_note(bot, kb, local):
    long_passages = [kb.by_id(i) for i in ("logic-bomb", "infinite-loop", "copyleft")]
    prompt, used, _ = bot.prompt("what is it?", long_passages, history=[("q " * 50, "a " * 50)])
    assert local.count_tokens(prompt) <= local.context - bot.config.max_tokens
    assert used and used[0].id == "logic-bomb"
    reply = bot.reply(LOGIC_BOMB + " " + "really " * 400)
    assert any("longer than the model's context" in note for note in reply.notes), reply.notes


def test_metrics_on_known_ranks():
    assert rank_of(["a", "b", "c"], ["c", "x"]) == 3 and rank_of(["a"], ["z"]) is None
    scores = retrieval_scores([1, 2, None, 6])
    assert scores == {"recall_at_1": 0.25, "recall_at_5": 0.5, "mrr": pytest.approx((1 + 1 / 2 + 0 + 1 / 6) / 4)}


@pytest.mark.parametrize("content,message", [
    ("", "is empty"),
    ('{"id": "a", "text": "fine"}\n{not json}\n', "line 2: not JSON"),
    ('{"id": "a", "title": "t"}\n', "line 1: expected an object with a non-empty string 'text'"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "repeated: a"),
    ('{"id": "a", "text": ["not", "text"]}\n', "line 1"),
])
def test_bad_knowledge_bases_are_named(tmp_path, content, message):
    path = tmp_path / "kb.jsonl"
    path.write_text(content)
    with pytest.raises(AssistantError, match=message):
        KnowledgeBase.load(path)


def test_a_folder_of_text_files_is_a_knowledge_base(tmp_path):
    (tmp_path / "returns.md").write_text("# Returns\nItems can be returned within 30 days with the receipt.")
    (tmp_path / "shipping.txt").write_text("Shipping\nOrders ship within two business days.")
    (tmp_path / "notes.csv").write_text("ignored")
    kb = KnowledgeBase.load(tmp_path)
    assert [(p.id, p.title) for p in kb.passages] == [("returns", "Returns"), ("shipping", "Shipping")]
    bot = Assistant(kb, None, AssistantConfig(retriever="bm25", reply="extract", min_bm25=0.01), cache_dir=None)
    assert bot.answer("how many days do I have to return an item?")[1] == ["returns"]
    with pytest.raises(AssistantError, match="does not exist"):
        KnowledgeBase.load(tmp_path / "missing")
    with pytest.raises(AssistantError, match="is empty"):
        KnowledgeBase.load(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint):
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "gptkit", "serve", "--checkpoint", str(checkpoint), "--port",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError(f"gptkit serve did not start: {process.stderr.read() if process.stderr else ''}")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_gptkit_server_is_a_backend_like_the_local_checkpoint(server, kb, local, tmp_path):
    remote = HTTPBackend(server)
    assert remote.context == local.context
    texts = [kb.passages[0].indexed_text(), LOGIC_BOMB, "word " * 300]
    remote_vectors, remote_cut = remote.embed(texts)
    local_vectors, local_cut = local.embed(texts)
    np.testing.assert_allclose(remote_vectors, local_vectors, atol=1e-4)
    assert remote_cut == local_cut and local_cut[1:] == [False, True]
    bot = Assistant(KnowledgeBase(kb.passages[:100], "first 100"), remote, AssistantConfig(max_tokens=4,
                                                                                           min_bm25=0.1),
                    cache_dir=tmp_path)
    text, cited = bot.answer(kb.passages[3].text)
    assert cited and text.endswith(f"[{', '.join(cited)}]")


def test_a_server_that_does_not_answer_is_a_clear_error():
    with pytest.raises(AssistantError, match="does not answer"):
        HTTPBackend(f"http://127.0.0.1:{_free_port()}", timeout=2)


def test_the_command_line_answers_and_fails_cleanly(checkpoint, tmp_path):
    run = cli(str(HERE / "assistant.py"), "--checkpoint", str(checkpoint), "--max-tokens", "4", "--cache",
              str(tmp_path), "--question", LOGIC_BOMB, "--question", "What is the capital of Australia?")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == IDK and "cited:" in run.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    run = cli(str(HERE / "assistant.py"), "--kb", str(bad), "--question", "hi")
    assert run.returncode == 2 and "line 1: not JSON" in run.stderr and "Traceback" not in run.stderr
    run = cli(str(HERE / "assistant.py"), "--server", f"http://127.0.0.1:{_free_port()}", "--question", "hi")
    assert run.returncode == 2 and "does not answer" in run.stderr and "Traceback" not in run.stderr
    run = cli(str(HERE / "assistant.py"), "--checkpoint", str(tmp_path / "nope"), "--question", "hi")
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_evaluate_prints_every_retriever_and_the_controls(checkpoint, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": LOGIC_BOMB, "answers": ["logic-bomb"]}) + "\n"
                         + json.dumps({"question": "What time does your store open?", "answers": []}) + "\n"
                         + json.dumps({"question": "a program that never terminates", "answers": ["infinite-loop"]})
                         + "\n" + json.dumps({"question": "Do you ship to Canada?", "answers": []}) + "\n")
    run = cli(str(HERE / "evaluate.py"), "--checkpoint", str(checkpoint), "--questions", str(questions), "--cache",
              str(tmp_path), "--answers", "1")
    assert run.returncode == 0, run.stderr
    for row in ("random ranking (chance)", "| bm25", "| dense", "| hybrid, dense weight", "hybrid, equal weights",
                "vectors shuffled (control)", "tuned on one half of the questions"):
        assert row in run.stdout, run.stdout


# --- the chat server and page ---------------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def chat_url(bot):
    """The assistant's own OpenAI-shaped server (chat_server.py) with the chat page, on loopback."""
    import threading

    import uvicorn
    from chat_server import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(bot), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/v1/models", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def test_the_openai_client_talks_to_the_assistant(chat_url, bot):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{chat_url}/v1", api_key="none", max_retries=0)
    whole = client.chat.completions.create(model="customer-service", messages=[{"role": "user", "content": LOGIC_BOMB}])
    text, cited = bot.answer(LOGIC_BOMB)
    assert whole.choices[0].message.content == text and whole.model_extra["citations"] == cited
    chunks = list(client.chat.completions.create(model="customer-service", stream=True,
                                                 messages=[{"role": "user", "content": LOGIC_BOMB}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert len(chunks) >= 3 and chunks[-1].model_extra["citations"] == cited
    follow = client.chat.completions.create(model="customer-service", messages=[
        {"role": "user", "content": LOGIC_BOMB}, {"role": "assistant", "content": text},
        {"role": "user", "content": "and who would do such a thing?"}])
    assert follow.model_extra["citations"], follow  # answered from the history, not "I don't know"
    with pytest.raises(openai.BadRequestError, match="last message must be the user's question"):
        client.chat.completions.create(model="customer-service", messages=[{"role": "assistant", "content": "hi"}])


def test_the_chat_page_shows_a_cited_reply_and_i_dont_know(chat_url, tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"the browser test needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"):
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    replies = "return [...document.querySelectorAll('#messages .message')].map(b => [b.dataset.role, " \
              "b.querySelector('.content').textContent, b.dataset.state || null]);"

    def ask(question: str) -> list:
        before = len(driver.execute_script(replies))
        driver.find_element("id", "input").send_keys(question)
        driver.find_element("id", "send").click()
        deadline = time.time() + 60
        while time.time() < deadline:
            shown = driver.execute_script(replies)
            if len(shown) >= before + 2 and shown[-1][2] not in (None, "streaming"):
                return shown[-1]
            time.sleep(0.05)
        raise AssertionError(f"no reply in the page: {driver.execute_script(replies)}")

    try:
        driver.get(f"{chat_url}/")
        assert driver.title == "Customer service"
        role, text, _ = ask(LOGIC_BOMB)
        assert role == "assistant" and text.rstrip().endswith("]") and "logic-bomb" in text
        assert ask("What is the capital of Australia?")[1] == IDK
    finally:
        driver.quit()


def test_make_pairs_trains_the_retriever_on_the_knowledge_base_itself(kb, tmp_path):
    from make_pairs import knowledge_base_pairs

    from gptkit.data.pairs import read_pairs

    small = KnowledgeBase(kb.passages[:20], "first 20")
    pairs = knowledge_base_pairs(small, spans=2, seed=0)
    targets = {p.indexed_text() for p in small.passages}
    assert all(pair["positive"] in targets for pair in pairs)
    for passage in small.passages:
        queries = [pair["query"] for pair in pairs if pair["positive"] == passage.indexed_text()]
        assert any(passage.title in q for q in queries)  # the question naming the title
        spans = [q for q in queries if passage.title not in q]
        assert all(q in " ".join(passage.text.split()) for q in spans)  # spans of the passage's own words
    out = tmp_path / "pairs.jsonl"
    out.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert len(read_pairs(out)) == len(pairs)


def test_a_short_question_naming_an_entry_is_answered_though_its_bm25_score_is_low(kb):
    bot = Assistant(kb, None, AssistantConfig(retriever="bm25", reply="extract"), cache_dir=None)
    question = "what is bikeshedding?"
    assert bot.bm25.search(question, 1)[0][1] < bot.config.min_bm25  # a short question scores low...
    assert bot.answer(question)[1] == ["bikeshedding"]  # ...but names the entry's title
    assert not bot.names_a_title("Can I change my delivery address after checkout?")
    assert not bot.names_a_title("is it open?")  # one-word titles this short ("open") are too common to count
