"""Recommendation by text interest, on gptkit's public API only: items with text, a user profile from the texts the
user liked or wrote, the top-k unseen items by embedding cosine similarity, each explained by the liked (or written)
text it is closest to; knows nothing of how the embedding model was trained, of the command line or of evaluation.

    from recommender import Recommender
    rec = Recommender("out/bench/finetune_base", cache_dir="out/recommend/cache")   # the bundled fortunes
    for r in rec.recommend(liked_ids=["12", "40", "77"], k=10):
        print(r.item_id, r.score, "because you liked", r.because_id, r.because_score)

Embeddings are `gptkit.LLM.embed(texts, pooling=...)` (L2-normalised, so a dot product is a cosine); any checkpoint
works, a plain pretrained one or an embedding fine-tune. Item embeddings are cached in `cache_dir` under a digest of
the items, the text style, the pooling and the model (see `embedding_digest`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gptkit import LLM, GptkitError, english_mix_style

Profile = Literal["mean", "max"]
PROFILES: tuple[str, ...] = ("mean", "max")
CACHE_FORMAT = "gptkit-recommend-1"
"""Part of every cache digest: bump it when what is cached changes meaning."""


def fail(message: str) -> None:
    raise GptkitError(message)


# ------------------------------------------------------------------------------------------------
# items and users


@dataclass(frozen=True)
class Item:
    """One recommendable thing: its id (a string), its text and, optionally, its category."""

    id: str
    text: str
    category: str | None = None


@dataclass(frozen=True)
class UserLikes:
    """What one user liked (item ids) and wrote (free texts): the material of their profile."""

    user: str
    liked: tuple[str, ...] = ()
    wrote: tuple[str, ...] = ()


def parse_items(rows: Iterable[Mapping[str, Any]], where: str = "items") -> list[Item]:
    """Items from dicts with `text`, optional `id` (default: the row number) and `category` (or `label`).

    Refuses, with the row named: a row that is not an object, a missing, non-string or blank text, a duplicate id,
    and an empty list.
    """
    items: list[Item] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        if not isinstance(row, Mapping):
            fail(f"{where}: row {n} is a {type(row).__name__}, not an object with a 'text'")
        item_id = str(row.get("id", n))
        text = row.get("text")
        if not isinstance(text, str):
            fail(f"{where}: item {item_id!r} (row {n}) is not a text item: its 'text' is "
                 f"{'missing' if text is None else 'a ' + type(text).__name__}; every item needs a non-empty string")
        if not text.strip():
            fail(f"{where}: item {item_id!r} (row {n}) has an empty text; every item needs a non-empty string")
        if item_id in seen:
            fail(f"{where}: item id {item_id!r} appears twice (row {n}); ids must be unique")
        seen.add(item_id)
        category = row.get("category", row.get("label"))
        items.append(Item(item_id, text, None if category is None else str(category)))
    if not items:
        fail(f"{where}: the item list is empty: give at least one item with a 'text'")
    return items


def read_jsonl(path: str | Path) -> list[Any]:
    """The JSON value on each non-blank line of a file (a clear error for a missing file or a bad line)."""
    path = Path(path)
    if not path.is_file():
        fail(f"{path}: no such file")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                fail(f"{path}:{n}: not JSON ({e.msg})")
    return rows


def load_items(path: str | Path | None = None) -> list[Item]:
    """Items from a JSON-lines file (see `parse_items`), or the bundled fortunes when `path` is None."""
    if path is None:
        return bundled_fortunes()
    return parse_items(read_jsonl(path), where=str(path))


def bundled_fortunes() -> list[Item]:
    """The 1,280 fortune cookies in 8 categories shipped with gptkit (gptkit/data/labelled/fortunes8.jsonl), read
    as package data; ids are the row numbers "0" to "1279", categories their labels."""
    source = importlib.resources.files("gptkit").joinpath("data/labelled/fortunes8.jsonl")
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    return parse_items(rows, where="fortunes8.jsonl")


def load_users(path: str | Path) -> list[UserLikes]:
    """Users from a JSON-lines file of {"user": ..., "liked": [item ids], "wrote": [texts]} (either list may go)."""
    users = []
    for n, row in enumerate(read_jsonl(path)):
        if not isinstance(row, dict):
            fail(f"{path}: row {n} is not an object")
        liked, wrote = row.get("liked", []), row.get("wrote", [])
        if not isinstance(liked, list) or not isinstance(wrote, list):
            fail(f"{path}: row {n}: 'liked' and 'wrote' must be lists")
        if not all(isinstance(t, str) for t in wrote):
            fail(f"{path}: row {n}: 'wrote' must be a list of strings")
        users.append(UserLikes(str(row.get("user", n)), tuple(str(i) for i in liked), tuple(wrote)))
    return users


# ------------------------------------------------------------------------------------------------
# text styles


STYLES: dict[str, Callable[[str], str]] = {
    "raw": lambda text: text,
    "lower": lambda text: re.sub(r"\s+", " ", text.lower()).strip(),
    "corpus": english_mix_style,  # the pretraining corpus's own writing (gptkit.english_mix_style)
}
"""How a text is written before it is embedded: as given, lower-cased, or in the pretraining corpus's style."""


def restyle(name: str) -> Callable[[str], str]:
    if name not in STYLES:
        fail(f"unknown text style {name!r}; choose one of {', '.join(STYLES)}")
    return STYLES[name]


# ------------------------------------------------------------------------------------------------
# ranking (shared with the TF-IDF baseline of recommend_eval)


@dataclass(frozen=True)
class Ranked:
    """One ranked item by index: its score, and which profile text it is closest to (index into the profile)."""

    index: int
    score: float
    because: int
    because_score: float


def rank_by_similarity(sims: np.ndarray, gram: np.ndarray, profile: str, exclude: Iterable[int],
                       k: int) -> list[Ranked]:
    """The k best items, best first, for a profile of L texts.

    sims: (L, N) cosine similarity of each profile text to each item; gram: (L, L) the profile texts' own
    similarities (unit vectors' dot products). profile "mean": the cosine to the normalised mean of the profile's
    vectors (sum of the rows over the mean's norm, computed from the gram, so any vectoriser with unit vectors fits,
    sparse TF-IDF too); "max": the best similarity to any one profile text. Ties go to the lower index.
    """
    if profile not in PROFILES:
        fail(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if k < 1:
        fail(f"k must be at least 1, got {k}")
    closest, closest_score = sims.argmax(axis=0), sims.max(axis=0)
    if profile == "max":
        scores = closest_score.astype(np.float64)
    else:
        norm = float(np.sqrt(max(gram.sum(), 1e-24)))  # |sum of unit vectors|
        scores = sims.sum(axis=0, dtype=np.float64) / norm
    scores = scores.copy()
    excluded = np.fromiter(exclude, dtype=np.int64)
    scores[excluded] = -np.inf
    # stable sort of -score: equal scores keep index order, so results are reproducible
    order = np.argsort(-scores, kind="stable")[:k]
    return [Ranked(int(i), float(scores[i]), int(closest[i]), float(closest_score[i]))
            for i in order if np.isfinite(scores[i])]


# ------------------------------------------------------------------------------------------------
# the recommender


@dataclass(frozen=True)
class Recommendation:
    """An item recommended, its score, and why: the liked (or written) text it is closest to and that similarity.
    `because_id` is the liked item's id, or None when the closest text is one the user wrote."""

    item_id: str
    score: float
    because_id: str | None
    because_text: str
    because_score: float
    text: str
    category: str | None = None


class Recommender:
    """Items embedded once (and cached); `recommend` ranks them for a profile of liked ids and written texts."""

    def __init__(self, llm_or_path: LLM | str | Path, items: Sequence[Item | Mapping[str, Any]] | str | Path | None = None,
                 *, pooling: str = "mean", style: str = "raw", profile: Profile = "mean", center: bool = True,
                 cache_dir: str | Path | None = None) -> None:
        """llm_or_path: a loaded `gptkit.LLM` or a checkpoint/run directory for `LLM.load`. items: Item objects,
        dicts as `parse_items` reads, a JSON-lines file, or None for the bundled fortunes. style: a STYLES name,
        applied to every text before embedding. center: subtract the items' mean embedding from every embedding
        (items' and written texts') and normalise again before taking cosines. cache_dir: where item embeddings are
        kept (None: not cached).

        Why center: a language model's mean-pooled states share one large common direction (they are anisotropic,
        Ethayarajh 2019), so every cosine is near 1 and a mean profile ranks first the items that lie furthest along
        that direction, whoever the user is. Removing the catalogue mean (as in Mu & Viswanath's "all-but-the-top")
        leaves what tells the items apart; benchmarks/recommend.py measures both."""
        self.llm = llm_or_path if isinstance(llm_or_path, LLM) else LLM.load(llm_or_path)
        if items is None or isinstance(items, (str, Path)):
            self.items = load_items(items)
        else:
            self.items = parse_items([{"id": i.id, "text": i.text, "category": i.category} if isinstance(i, Item)
                                      else i for i in items])
        if profile not in PROFILES:
            fail(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
        if pooling not in ("mean", "last"):
            fail(f"pooling must be mean or last, got {pooling!r}")
        self.pooling, self.style, self.profile, self.center = pooling, style, profile, center
        self._restyle = restyle(style)
        self.index = {item.id: n for n, item in enumerate(self.items)}
        self.embeddings, self.cache_status = self._item_vectors(None if cache_dir is None else Path(cache_dir))
        """(N, d) float32 item embeddings as `LLM.embed` gives them; cache_status: "computed", "read" (from the
        cache) or "off"."""
        self.mean = self.embeddings.astype(np.float64).mean(axis=0) if center else np.zeros(self.embeddings.shape[1])
        self.vectors = self.directions(self.embeddings)
        """(N, d) float64 unit vectors the cosines are taken between: the embeddings, centred when `center`."""
        self.truncated = sum(cut for _, cut in self.llm.embedding_rows([self._restyle(i.text) for i in self.items]))
        """How many item texts were longer than the model's context (embedded from their first block_size tokens)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), d) unit embeddings of texts (`LLM.embed`), written in this recommender's style."""
        vectors = self.llm.embed([self._restyle(t) for t in texts], pooling=self.pooling)
        return vectors.numpy().astype(np.float32)

    def directions(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings as the unit vectors compared: less the items' mean (when centring), normalised."""
        # float64: centring subtracts nearly equal vectors, and float32 would lose the digits that differ
        shifted = embeddings.astype(np.float64) - self.mean
        return shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)

    def embedding_digest(self) -> str:
        """sha256 of what the item embeddings depend on: the items (ids and texts), the style, the pooling, and the
        model, fingerprinted by its embeddings of fixed probe texts (so any checkpoint kind, a fine-tune or a model
        built in memory, is told apart without knowing its files)."""
        h = hashlib.sha256(json.dumps([CACHE_FORMAT, self.style, self.pooling]).encode())
        for item in self.items:
            h.update(json.dumps([item.id, item.text]).encode())
        probe = self.embed(["the cat sat on the mat .", "What is a computer?", "Ask not what your country can do."])
        # rounded so that float noise from a different thread count does not miss the cache (a miss only re-embeds)
        h.update(np.round(probe.astype(np.float64), 5).tobytes())
        return h.hexdigest()

    def _item_vectors(self, cache_dir: Path | None) -> tuple[np.ndarray, str]:
        if cache_dir is None:
            return self.embed([i.text for i in self.items]), "off"
        digest = self.embedding_digest()
        path = cache_dir / f"items-{digest[:24]}.npy"
        if path.is_file():
            vectors = np.load(path)
            if vectors.shape[0] == len(self.items):
                return vectors, "read"
        vectors = self.embed([i.text for i in self.items])
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npy")  # written aside, then renamed: no torn cache file
        np.save(partial, vectors)
        os.replace(partial, path)
        path.with_suffix(".json").write_text(json.dumps(
            {"digest": digest, "items": len(self.items), "dimensions": int(vectors.shape[1]), "style": self.style,
             "pooling": self.pooling, "checkpoint": None if self.llm.path is None else str(self.llm.path)}) + "\n")
        return vectors, "computed"

    def recommend(self, liked_ids: Sequence[str | int] = (), wrote: Sequence[str] = (), k: int = 10,
                  profile: Profile | None = None) -> list[Recommendation]:
        """The top-k items the user has not liked, best first, each with the profile text it is closest to.

        liked_ids: ids of items the user liked (unknown ids are refused); wrote: free texts by the user, embedded
        now; profile: "mean" or "max" (default: this recommender's). At least one liked id or written text.
        """
        liked = [str(i) for i in liked_ids]
        unknown = [i for i in liked if i not in self.index]
        if unknown:
            fail(f"unknown liked item id(s) {', '.join(map(repr, unknown[:5]))}"
                 f"{' and more' if len(unknown) > 5 else ''}: ids are those of the items "
                 f"(here {self.items[0].id!r} ... {self.items[-1].id!r})")
        if isinstance(wrote, str):
            wrote = [wrote]
        if not all(isinstance(t, str) and t.strip() for t in wrote):
            fail("wrote must be a list of non-empty strings")
        liked = list(dict.fromkeys(liked))  # a like given twice counts once
        if not liked and not wrote:
            fail("an empty profile: give at least one liked item id or one text the user wrote")
        rows = [self.index[i] for i in liked]
        profile_vectors = self.vectors[rows]
        if wrote:
            profile_vectors = np.concatenate([profile_vectors, self.directions(self.embed(list(wrote)))])
        sims = profile_vectors @ self.vectors.T
        gram = profile_vectors @ profile_vectors.T
        sources: list[tuple[str | None, str]] = [(i, self.items[self.index[i]].text) for i in liked]
        sources += [(None, t) for t in wrote]
        out = []
        for r in rank_by_similarity(sims, gram, profile or self.profile, rows, k):
            item = self.items[r.index]
            because_id, because_text = sources[r.because]
            out.append(Recommendation(item.id, r.score, because_id, because_text, r.because_score, item.text,
                                      item.category))
        return out
