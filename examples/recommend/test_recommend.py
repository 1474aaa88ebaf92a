"""Tests of the text-interest recommender on a tiny checkpoint pretrained here: rankings and explanations against
similarities computed independently from `LLM.embed`, the metrics on hand-built rankings, the baselines, the
embedding cache, and the refusals of bad input (in Python and on the command line)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recommend_eval as ev
from recommender import Item, Recommender, bundled_fortunes, load_items, parse_items

from gptkit import LLM, GptkitError

TINY = ("--model.n-layer", "1", "--model.n-head", "2", "--model.n-embd", "32", "--model.block-size", "64",
        "--batch-size", "4", "--sample-tokens", "0")


@pytest.fixture(scope="module")
def fortunes() -> list[Item]:
    return bundled_fortunes()


@pytest.fixture(scope="module")
def items(fortunes) -> list[Item]:
    """20 fortunes from each of 4 categories."""
    chosen = [f for f in fortunes if f.category in ("computers", "food", "law", "startrek")]
    by_category: dict[str, list[Item]] = {}
    for item in chosen:
        by_category.setdefault(item.category or "", []).append(item)
    return [item for group in by_category.values() for item in group[:20]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, fortunes) -> Path:
    """A character-level GPT pretrained for 20 steps on fortune text, as a user would (`gptkit pretrain`)."""
    root = tmp_path_factory.mktemp("rec")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f.text for f in fortunes[::4]))
    subprocess.run([sys.executable, "-m", "gptkit", "pretrain", "--data", str(corpus), "--tokenizer", "char",
                    "--out", str(root / "run"), "--max-iters", "20", "--eval-interval", "20", *TINY],
                   check=True, capture_output=True, timeout=300)
    return root / "run"


@pytest.fixture(scope="module")
def llm(checkpoint) -> LLM:
    return LLM.load(checkpoint)


@pytest.fixture(scope="module")
def recommender(llm, items) -> Recommender:
    return Recommender(llm, items)


def test_bundled_fortunes_are_read_as_package_data(fortunes):
    assert len(fortunes) == 1280
    assert [f.id for f in fortunes[:3]] == ["0", "1", "2"]
    assert sorted({f.category for f in fortunes}) == ["computers", "drugs", "education", "food", "law", "politics",
                                                      "science", "startrek"]


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("profile", ["mean", "max"])
def test_recommendations_exclude_likes_are_sorted_and_explained_by_the_closest_like(llm, items, profile, center):
    liked = [items[3].id, items[25].id, items[47].id]
    recs = Recommender(llm, items, center=center).recommend(liked_ids=liked, k=10, profile=profile)
    assert len(recs) == 10
    assert not {r.item_id for r in recs} & set(liked)
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)

    # the same similarities, computed here from llm.embed alone
    vectors = llm.embed([i.text for i in items], pooling="mean").numpy().astype(np.float64)
    if center:
        vectors -= vectors.mean(0)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = {item.id: n for n, item in enumerate(items)}
    liked_vectors = vectors[[index[i] for i in liked]]
    sims = liked_vectors @ vectors.T                                  # (3, N)
    if profile == "mean":
        centre = liked_vectors.mean(0)
        expected = vectors @ (centre / np.linalg.norm(centre))
    else:
        expected = sims.max(0)
    for r in recs:
        n = index[r.item_id]
        assert r.because_id in liked
        assert r.because_text == items[index[r.because_id]].text
        assert r.because_score == pytest.approx(sims[:, n].max(), abs=1e-5)
        assert sims[liked.index(r.because_id), n] == pytest.approx(sims[:, n].max(), abs=1e-5)
        assert r.score == pytest.approx(expected[n], abs=1e-5)
        assert r.text == items[n].text and r.category == items[n].category
    # nothing left out scores higher than what was recommended
    rest = [n for n in range(len(items)) if items[n].id not in liked and items[n].id not in {r.item_id for r in recs}]
    assert max(expected[rest]) <= recs[-1].score + 1e-5


def test_a_written_text_is_a_profile_and_explains_by_itself(recommender, items):
    target = items[10]
    recs = recommender.recommend(wrote=[target.text], k=5)
    assert recs[0].score >= max(r.score for r in recs) - 1e-6
    top = next(r for r in recs if r.item_id == target.id)  # its own text is (one of) the closest
    assert top.because_id is None and top.because_text == target.text
    assert top.because_score == pytest.approx(1.0, abs=1e-5)
    # liked and written together: every explanation points at one of the two
    both = recommender.recommend(liked_ids=[items[0].id], wrote=["the court sentenced the lawyer"], k=5)
    assert {r.because_id for r in both} <= {items[0].id, None}


def test_all_items_liked_leaves_nothing_to_recommend(llm):
    small = [Item("a", "one fortune"), Item("b", "another fortune")]
    rec = Recommender(llm, small)
    assert [r.item_id for r in rec.recommend(liked_ids=["a"], k=10)] == ["b"]
    assert rec.recommend(liked_ids=["a", "b"], k=10) == []


# ------------------------------------------------------------------------------------------------
# metrics and baselines


def test_hit_rate_and_ndcg_on_rankings_with_known_answers():
    assert ev.hit_rate_at_k([5, 3, 9, 1], [3, 1]) == 1.0
    assert ev.hit_rate_at_k([5, 9], [3]) == 0.0
    assert ev.hit_rate_at_k(list(range(20)), [15], k=10) == 0.0           # the hit is beyond k
    assert ev.hit_rate_at_k(list(range(20)), [9], k=10) == 1.0
    # hits at ranks 2 and 4 of two relevant items: (1/log2 3 + 1/log2 5) / (1 + 1/log2 3)
    assert ev.ndcg_at_k([5, 3, 9, 1], [3, 1]) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5))
                                                            / (1 + 1 / math.log2(3)))
    assert ev.ndcg_at_k([3, 1, 5], [1, 3]) == pytest.approx(1.0)           # the ideal order
    assert ev.ndcg_at_k([7, 8, 9], [1]) == 0.0
    assert ev.ndcg_at_k([7, 1], [1], k=1) == 0.0
    # more relevant items than k: the ideal is k hits
    assert ev.ndcg_at_k(list(range(10)), list(range(20)), k=10) == pytest.approx(1.0)


def test_simulated_users_follow_their_favourite_categories(items):
    config = ev.SimulationConfig(users=50, likes=6, held_out=2, noise=0.0, two_favourites=0.5)
    users = ev.simulate_users(items, config, seed=3)
    assert users == ev.simulate_users(items, config, seed=3)              # reproducible
    assert users != ev.simulate_users(items, config, seed=4)
    for user in users:
        assert len(user.train) == 4 and len(user.held) == 2
        assert len(set(user.train) | set(user.held)) == 6            # no item liked twice
        assert all(items[i].category in user.favourites for i in user.train + user.held)
    noisy = ev.simulate_users(items, ev.SimulationConfig(users=100, likes=6, held_out=2, noise=1.0), seed=3)
    assert all(items[i].category not in u.favourites for u in noisy for i in u.train + u.held)


def test_baselines_rank_as_they_claim(items):
    users = ev.simulate_users(items, ev.SimulationConfig(users=40, likes=5, held_out=1, noise=0.0), seed=0)
    counts = np.bincount([i for u in users for i in u.train], minlength=len(items))
    popular = ev.popularity_ranker(users, len(items), k=10)
    for user in users[:10]:
        ranked = popular(user)
        assert not set(ranked) & set(user.train) and len(ranked) == 10
        assert list(counts[ranked]) == sorted(counts[ranked], reverse=True)
        others = [i for i in range(len(items)) if i not in ranked and i not in user.train]
        assert counts[ranked].min() >= counts[others].max()
    draw, oracle = ev.random_ranker(len(items), 10, seed=0), ev.oracle_ranker(items, 10, seed=0)
    for user in users[:10]:
        ranked = draw(user)
        assert len(set(ranked)) == 10 and not set(ranked) & set(user.train)
        ranked = oracle(user)
        assert len(set(ranked)) == 10 and not set(ranked) & set(user.train)
        assert all(items[i].category in user.favourites for i in ranked)
    # the oracle, which knows the category, beats random on users who like only their favourites
    many = ev.simulate_users(items, ev.SimulationConfig(users=200, likes=4, held_out=1, noise=0.0, two_favourites=0.0), 1)
    assert ev.score_ranker(oracle, many, 10)[0] > ev.score_ranker(draw, many, 10)[0] + 0.2
    categories = [i.category for i in items]
    assert ev.score_ranker(oracle, many, 10, categories)[2] == 1.0
    assert ev.score_ranker(draw, many, 10, categories)[2] == pytest.approx(0.25, abs=0.05)  # 1 of 4 categories


def test_tfidf_baseline_ranks_shared_words_first():
    texts = ["apple banana split", "apple cherry pie", "dog chases cat", "dog bites mouse", "quantum physics lecture"]
    items = [Item(str(n), t, "c") for n, t in enumerate(texts)]
    for profile in ("mean", "max"):
        rank = ev.tfidf_ranker(items, profile, k=4)
        assert rank(ev.SimUser(("c",), (0,), (1,)))[0] == 1
        assert rank(ev.SimUser(("c",), (2,), (3,)))[0] == 3
        assert set(rank(ev.SimUser(("c",), (0, 2), (1,)))[:2]) == {1, 3}


def test_evaluate_reports_every_method_on_the_same_users(recommender, items):
    config = ev.SimulationConfig(users=30, likes=4, held_out=1)
    results = ev.evaluate({"raw": recommender}, items, seeds=(0, 1), config=config)
    names = [r.method for r in results]
    assert names == ["embedding, raw, mean profile", "embedding, raw, max profile", "tf-idf cosine, mean profile",
                     "tf-idf cosine, max profile", "popularity", "random", "category oracle (random in favourites)"]
    for r in results:
        assert len(r.hit_rate) == len(r.ndcg) == len(r.favourites) == 2
        assert all(0 <= h <= 1 and 0 <= g <= h + 1e-9 for h, g in zip(r.hit_rate, r.ndcg))  # NDCG <= hit for 1 answer
        assert all(0 <= f <= 1 for f in r.favourites)
    oracle = results[-1]
    assert oracle.favourites == [1.0, 1.0]                     # it recommends only from the favourite categories
    random_share = results[-2].favourites
    assert max(random_share) < 0.8                             # 4 categories: about 1/4 to 1/2 by chance


# ------------------------------------------------------------------------------------------------
# the cache


def test_item_embeddings_are_cached_and_a_changed_item_list_is_embedded_again(llm, items, tmp_path):
    first = Recommender(llm, items, cache_dir=tmp_path)
    assert first.cache_status == "computed"
    assert len(list(tmp_path.glob("*.npy"))) == 1
    again = Recommender(llm, items, cache_dir=tmp_path)
    assert again.cache_status == "read"
    np.testing.assert_array_equal(again.vectors, first.vectors)
    changed = list(items)
    changed[5] = Item(changed[5].id, changed[5].text + " And then some.", changed[5].category)
    edited = Recommender(llm, changed, cache_dir=tmp_path)
    assert edited.cache_status == "computed"
    assert not np.allclose(edited.vectors[5], first.vectors[5])
    assert Recommender(llm, items[:-1], cache_dir=tmp_path).cache_status == "computed"
    assert Recommender(llm, items, style="lower", cache_dir=tmp_path).cache_status == "computed"
    assert len(list(tmp_path.glob("*.npy"))) == 4
    assert Recommender(llm, items, cache_dir=tmp_path).cache_status == "read"


# ------------------------------------------------------------------------------------------------
# bad input


def test_bad_items_and_likes_are_refused_clearly(llm, recommender, items, tmp_path):
    with pytest.raises(GptkitError, match="item list is empty"):
        Recommender(llm, [])
    with pytest.raises(GptkitError, match=r"item '1' \(row 1\) is not a text item: its 'text' is a int"):
        parse_items([{"id": 0, "text": "fine"}, {"id": 1, "text": 42}])
    with pytest.raises(GptkitError, match="is not a text item: its 'text' is missing"):
        Recommender(llm, [{"id": "x", "image": "cat.png"}])
    with pytest.raises(GptkitError, match="empty text"):
        parse_items([{"text": "  "}])
    with pytest.raises(GptkitError, match="appears twice"):
        parse_items([{"id": 1, "text": "a"}, {"id": "1", "text": "b"}])
    with pytest.raises(GptkitError, match=r"unknown liked item id\(s\) 'nope'"):
        recommender.recommend(liked_ids=[items[0].id, "nope"])
    with pytest.raises(GptkitError, match="empty profile"):
        recommender.recommend(liked_ids=[])
    with pytest.raises(GptkitError, match="profile must be one of"):
        recommender.recommend(liked_ids=[items[0].id], profile="median")  # type: ignore[arg-type]
    with pytest.raises(GptkitError, match="k must be at least 1"):
        recommender.recommend(liked_ids=[items[0].id], k=0)
    with pytest.raises(GptkitError, match="needs a 'category'"):
        ev.simulate_users([Item("a", "text")] * 3, ev.SimulationConfig(), 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": ["not", "text"]}\n')
    with pytest.raises(GptkitError, match=r"bad.jsonl: item 'b' \(row 1\) is not a text item"):
        load_items(bad)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / "recommend.py"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_script_prints_explained_recommendations_and_refuses_bad_input(checkpoint, items, tmp_path):
    item_file = tmp_path / "items.jsonl"
    item_file.write_text("".join(json.dumps({"id": i.id, "text": i.text, "category": i.category}) + "\n"
                                 for i in items))
    common = ["--checkpoint", str(checkpoint), "--items", str(item_file), "--cache-dir", str(tmp_path / "cache")]
    ok = run_script(*common, "--liked", f"{items[0].id},{items[30].id}", "--k", "3", "--profile", "max")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("because you liked [") == 3
    because = re.findall(r"because you liked \[([^\]]+)\]", ok.stdout)
    assert len(because) == 3 and set(because) <= {items[0].id, items[30].id}

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    non_text = tmp_path / "non_text.jsonl"
    non_text.write_text('{"id": "a", "text": 3.5}\n')
    for args, message in [(["--items", str(empty), "--liked", "0"], "the item list is empty"),
                          (["--items", str(non_text), "--liked", "a"], "is not a text item"),
                          (["--items", str(item_file), "--liked", "no-such-id"], "unknown liked item id"),
                          (["--items", str(item_file)], "nothing to recommend for")]:
        proc = run_script("--checkpoint", str(checkpoint), "--cache-dir", "", *args)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_colike_pairs_come_from_one_users_likes_and_train_the_embed_task(tmp_path):
    from colike_pairs import colike_pairs, main as colike_main

    from gptkit.data.pairs import read_pairs

    liked = [["a", "b", "c"], ["x", "y"], ["solo"]]
    pairs = colike_pairs(liked, per_user=3)
    assert len(pairs) == 6  # 3 per user with two or more distinct likes, none for a single like
    for query, positive in pairs:
        assert query != positive and any(query in user and positive in user for user in liked)
    out = tmp_path / "pairs.jsonl"
    assert colike_main(["--out", str(out), "--users", "50", "--per-user", "2"]) == 0
    read = read_pairs(out)  # the file is what `gptkit finetune --task embed --data` reads
    assert 50 <= len(read) <= 100 and all(q != p for q, p in zip(read.queries, read.positives))
    likes = tmp_path / "likes.jsonl"
    likes.write_text('{"user": "u", "liked": ["0", "1", "2"]}\n')
    assert colike_main(["--likes", str(likes), "--out", str(out)]) == 0 and len(read_pairs(out)) >= 1
