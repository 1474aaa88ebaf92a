"""Offline evaluation of the recommender on simulated users: who likes what is made up from the items' categories
(the only ground truth available offline), some likes are held out, and each method's top-10 is scored by hit rate
and NDCG against them, beside popularity, random, TF-IDF and category-oracle baselines; knows nothing of the
command line.

A simulated user has one or two favourite categories and likes `likes` items: each is, with probability `noise`,
drawn from the other categories, else from the favourites, always in proportion to a Zipf-like item popularity
(item at popularity rank r weighs (r + 1) ** -popularity_exponent; the ranks are a random permutation per seed), so
that "most liked" carries real signal, as it does in real catalogues. `held_out` of the likes (chosen at random) are
hidden; every method sees the rest and ranks all other items.

Metrics, over users (then mean and spread over seeds):
  hit rate@k       the share of users with at least one held-out like in their top k
  NDCG@k           binary gains, DCG = sum over hits of 1 / log2(rank + 1), over the ideal DCG of min(held-out, k) hits
  favourites@k     the share of the top k in the user's favourite categories: whether a method finds the topic even
                   when it misses the exact held-out items (chance: the favourites' share of the catalogue)
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from recommender import Item, Recommender, fail, rank_by_similarity

Ranker = Callable[["SimUser"], list[int]]
"""A method under test: a user -> the indices of its top-k items (training likes excluded), best first."""


@dataclass(frozen=True)
class SimulationConfig:
    """How the simulated users are drawn."""

    users: int = 300
    likes: int = 10
    """Likes per user, held-out ones included."""
    held_out: int = 2
    noise: float = 0.2
    """Chance that a like comes from outside the user's favourite categories."""
    two_favourites: float = 0.5
    """Chance that a user has two favourite categories rather than one."""
    popularity_exponent: float = 0.5


@dataclass(frozen=True)
class SimUser:
    favourites: tuple[str, ...]
    train: tuple[int, ...]
    """Indices of the items whose likes the methods see."""
    held: tuple[int, ...]
    """Indices of the held-out likes: the answers."""


# ------------------------------------------------------------------------------------------------
# metrics


def hit_rate_at_k(ranked: Sequence[int], relevant: Sequence[int], k: int = 10) -> float:
    """1.0 if any relevant item is in the first k of `ranked`, else 0.0."""
    wanted = set(relevant)
    return float(any(i in wanted for i in ranked[:k]))


def ndcg_at_k(ranked: Sequence[int], relevant: Sequence[int], k: int = 10) -> float:
    """Normalised discounted cumulative gain of the first k of `ranked`, binary relevance (0 when nothing is
    relevant)."""
    wanted = set(relevant)
    dcg = sum(1.0 / math.log2(rank + 2) for rank, i in enumerate(ranked[:k]) if i in wanted)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(wanted), k)))
    return dcg / ideal if ideal else 0.0


# ------------------------------------------------------------------------------------------------
# simulated users


def simulate_users(items: Sequence[Item], config: SimulationConfig, seed: int) -> list[SimUser]:
    """Users as the module docstring describes, reproducible from `seed`."""
    if any(item.category is None for item in items):
        fail("evaluation simulates users from the items' categories: every item needs a 'category'")
    categories = sorted({item.category for item in items})  # type: ignore[type-var]
    if len(categories) < 3:
        fail(f"evaluation needs at least 3 item categories, got {len(categories)}")
    if not 0 < config.held_out < config.likes:
        fail(f"held_out must be between 1 and likes - 1 ({config.likes - 1}), got {config.held_out}")
    rng = np.random.default_rng(seed)
    weight = np.empty(len(items))
    weight[rng.permutation(len(items))] = (np.arange(len(items)) + 1.0) ** -config.popularity_exponent
    category = np.array([item.category for item in items])
    users = []
    for _ in range(config.users):
        n_fav = 2 if rng.random() < config.two_favourites else 1
        favourites = tuple(rng.choice(categories, size=n_fav, replace=False).tolist())
        inside = np.isin(category, favourites)
        liked: list[int] = []
        while len(liked) < config.likes:
            pool = ~inside if rng.random() < config.noise else inside
            p = np.where(pool, weight, 0.0)
            p[liked] = 0.0
            liked.append(int(rng.choice(len(items), p=p / p.sum())))
        held = rng.choice(config.likes, size=config.held_out, replace=False)
        users.append(SimUser(favourites, tuple(i for n, i in enumerate(liked) if n not in held),
                             tuple(liked[n] for n in sorted(held))))
    return users


# ------------------------------------------------------------------------------------------------
# methods


def embedding_ranker(recommender: Recommender, profile: str, k: int) -> Ranker:
    """The recommender itself, given the user's training likes."""
    ids = [item.id for item in recommender.items]
    index = recommender.index

    def rank(user: SimUser) -> list[int]:
        return [index[r.item_id] for r in recommender.recommend(liked_ids=[ids[i] for i in user.train], k=k,
                                                                profile=profile)]  # type: ignore[arg-type]
    return rank


def tfidf_ranker(items: Sequence[Item], profile: str, k: int) -> Ranker:
    """The same ranking on scikit-learn TF-IDF vectors (unit-length rows, unigrams and bigrams, sublinear tf): the
    non-neural text baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # optional, heavy: only the evaluation needs it

    vectors = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1).fit_transform(
        [item.text for item in items]).tocsr()

    def rank(user: SimUser) -> list[int]:
        liked = vectors[list(user.train)]
        sims = (liked @ vectors.T).toarray()
        gram = (liked @ liked.T).toarray()
        return [r.index for r in rank_by_similarity(sims, gram, profile, user.train, k)]
    return rank


def popularity_ranker(users: Sequence[SimUser], n_items: int, k: int) -> Ranker:
    """The items most liked across all users' training likes (held-out likes unseen), minus the user's own."""
    counts = Counter(i for user in users for i in user.train)
    order = sorted(range(n_items), key=lambda i: (-counts[i], i))

    def rank(user: SimUser) -> list[int]:
        seen = set(user.train)
        return [i for i in order if i not in seen][:k]
    return rank


def random_ranker(n_items: int, k: int, seed: int) -> Ranker:
    """k unseen items drawn uniformly: the floor any method must clear."""
    rng = np.random.default_rng(seed)

    def rank(user: SimUser) -> list[int]:
        candidates = np.setdiff1d(np.arange(n_items), user.train)
        return rng.choice(candidates, size=min(k, len(candidates)), replace=False).tolist()
    return rank


def oracle_ranker(items: Sequence[Item], k: int, seed: int) -> Ranker:
    """k unseen items drawn uniformly from the user's true favourite categories: what knowing the category, and
    nothing else, earns (a control; it ignores popularity, so it is not a strict ceiling)."""
    rng = np.random.default_rng(seed)
    category = np.array([item.category for item in items])

    def rank(user: SimUser) -> list[int]:
        candidates = np.setdiff1d(np.flatnonzero(np.isin(category, user.favourites)), user.train)
        return rng.choice(candidates, size=min(k, len(candidates)), replace=False).tolist()
    return rank


def score_ranker(rank: Ranker, users: Sequence[SimUser], k: int,
                 categories: Sequence[str | None] | None = None) -> tuple[float, float, float]:
    """(hit rate@k, NDCG@k, favourites@k) averaged over users; favourites@k is NaN without `categories` (each
    item's)."""
    hits, gains, topical = [], [], []
    for user in users:
        ranked = rank(user)
        if set(ranked) & set(user.train):
            fail("a method recommended an item the user already liked")  # a bug, not bad input: say it loudly
        hits.append(hit_rate_at_k(ranked, user.held, k))
        gains.append(ndcg_at_k(ranked, user.held, k))
        if categories is not None:
            topical.append(sum(categories[i] in user.favourites for i in ranked[:k]) / k)
    return statistics.fmean(hits), statistics.fmean(gains), statistics.fmean(topical) if topical else math.nan


# ------------------------------------------------------------------------------------------------
# the table


@dataclass
class Result:
    method: str
    hit_rate: list[float]
    ndcg: list[float]
    favourites: list[float]
    """One figure per seed."""

    def cells(self) -> list[str]:
        def cell(values: list[float]) -> str:
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.fmean(values):.3f}{spread}"
        return [self.method, cell(self.hit_rate), cell(self.ndcg), cell(self.favourites)]


def evaluate(recommenders: dict[str, Recommender], items: Sequence[Item], *, seeds: Sequence[int] = (0, 1, 2),
             config: SimulationConfig = SimulationConfig(), k: int = 10,
             profiles: Sequence[str] = ("mean", "max")) -> list[Result]:
    """Every method on the same simulated users, per seed: `recommenders` (name -> a Recommender on `items`, e.g.
    one per text style) with each profile, TF-IDF with each profile, popularity, random and the category oracle."""
    results: dict[str, Result] = {}
    categories = [item.category for item in items]

    def add(name: str, rank: Ranker, users: list[SimUser]) -> None:
        figures = score_ranker(rank, users, k, categories)
        result = results.setdefault(name, Result(name, [], [], []))
        result.hit_rate.append(figures[0])
        result.ndcg.append(figures[1])
        result.favourites.append(figures[2])

    for seed in seeds:
        users = simulate_users(items, config, seed)
        for name, recommender in recommenders.items():
            for profile in profiles:
                add(f"embedding, {name}, {profile} profile", embedding_ranker(recommender, profile, k), users)
        for profile in profiles:
            add(f"tf-idf cosine, {profile} profile", tfidf_ranker(items, profile, k), users)
        add("popularity", popularity_ranker(users, len(items), k), users)
        add("random", random_ranker(len(items), k, seed), users)
        add("category oracle (random in favourites)", oracle_ranker(items, k, seed), users)
    return list(results.values())


def format_table(results: Sequence[Result], k: int = 10) -> str:
    """A Markdown table of the results, mean ± standard deviation over seeds."""
    headers = ["method", f"hit rate@{k}", f"NDCG@{k}", f"favourites@{k}"]
    rows = [r.cells() for r in results]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)
