"""Training pairs for `gptkit finetune --task embed` from other users' likes: two items one user liked are a
(query, positive) pair, so the embedding learns what people who like one text also like.

    python examples/recommend/colike_pairs.py --out out/rec_pairs.jsonl          # a like log of simulated users
    python examples/recommend/colike_pairs.py --likes users.jsonl --out out/rec_pairs.jsonl   # your own log
    gptkit finetune --checkpoint out/bench/finetune_base --task embed --data out/rec_pairs.jsonl \\
        --text-style english_mix --method full --out out/rec_embed

Without --likes, the log is simulated like recommend_eval.py's users but from seeds (1000 and up) that the
evaluation never uses, so the users whose held-out likes are scored never shaped the embedding.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from recommend_eval import SimulationConfig, simulate_users
from recommender import load_items, load_users

from gptkit import GptkitError

TRAINING_SEED = 1000
"""Seeds from here up simulate the like log; the evaluation draws its users from seeds 0-999."""


def colike_pairs(liked: list[list[str]], seed: int = 0, per_user: int = 4) -> list[tuple[str, str]]:
    """Up to `per_user` pairs of distinct texts liked by the same user, drawn at random."""
    rng = random.Random(seed)
    pairs = []
    for texts in liked:
        for _ in range(per_user if len(set(texts)) > 1 else 0):
            a, b = rng.sample(sorted(set(texts)), 2)
            pairs.append((a, b))
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", help="items JSONL (default: the bundled fortunes)")
    p.add_argument("--likes", help="a like log, JSONL rows {\"user\", \"liked\": [ids]} (default: simulated users)")
    p.add_argument("--users", type=int, default=2000, help="simulated users in the log")
    p.add_argument("--per-user", type=int, default=4, help="pairs drawn from each user's likes")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        items = load_items(args.items)
        if args.likes:
            index = {item.id: item for item in items}
            liked = [[index[i].text for i in user.liked if i in index] for user in load_users(args.likes)]
        else:
            users = simulate_users(items, SimulationConfig(users=args.users), seed=TRAINING_SEED)
            liked = [[items[i].text for i in user.train + user.held] for user in users]
    except GptkitError as e:
        print(f"colike_pairs: error: {e}", file=sys.stderr)
        return 2
    pairs = colike_pairs(liked, per_user=args.per_user)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({"query": a, "positive": b}) + "\n" for a, b in pairs))
    print(f"{len(pairs)} co-liked pairs from {len(liked)} users -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
