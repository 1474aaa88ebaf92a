"""The recommender's command line: recommendations with their explanations for one user (--liked, --wrote) or a
file of users (--likes), or the offline evaluation on simulated users (--evaluate); parses, calls
`recommender` / `recommend_eval` and prints, nothing more.

    python examples/recommend/recommend.py --checkpoint out/bench/finetune_base --liked 12,40,77 --k 10
    python examples/recommend/recommend.py --checkpoint CKPT --wrote "the compiler dumped core again"
    python examples/recommend/recommend.py --checkpoint CKPT --items my_items.jsonl --likes users.jsonl
    python examples/recommend/recommend.py --checkpoint CKPT --evaluate --seeds 0,1,2

Errors in the input (an empty item list, an item without text, an unknown id) end with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a plain script: its sibling modules
from recommend_eval import SimulationConfig, evaluate, format_table
from recommender import STYLES, Recommendation, Recommender, UserLikes, load_users

from gptkit import GptkitError


def snippet(text: str, width: int = 90) -> str:
    """A text on one line, cut to `width` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def print_recommendations(user: UserLikes, recommendations: list[Recommendation]) -> None:
    print(f"user {user.user}: liked {len(user.liked)} item(s), wrote {len(user.wrote)} text(s)")
    for n, r in enumerate(recommendations, 1):
        category = f" ({r.category})" if r.category else ""
        print(f"{n:>3}. [{r.item_id}]{category} score {r.score:.3f}  {snippet(r.text)}")
        source = f"you liked [{r.because_id}]" if r.because_id is not None else "you wrote"
        print(f"       because {source} (similarity {r.because_score:.3f}): {snippet(r.because_text, 70)}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a gptkit checkpoint or run directory (any kind that embeds)")
    p.add_argument("--items", type=Path, help="items as JSON lines {id, text, category} (default: the bundled "
                                              "fortunes, ids 0-1279)")
    p.add_argument("--liked", default="", help="comma-separated ids of the items the user liked")
    p.add_argument("--wrote", action="append", default=[], help="a text the user wrote (repeatable)")
    p.add_argument("--likes", type=Path, help='users as JSON lines {"user": ..., "liked": [ids], "wrote": [texts]}')
    p.add_argument("--k", type=int, default=10, help="recommendations per user")
    p.add_argument("--profile", choices=("mean", "max"), default="mean",
                   help="mean: cosine to the mean liked embedding; max: best cosine to any one liked text")
    p.add_argument("--style", choices=list(STYLES), default="raw", help="how texts are written before embedding")
    p.add_argument("--pooling", choices=("mean", "last"), default="mean")
    p.add_argument("--cache-dir", type=Path, default=Path("out/recommend/cache"),
                   help="where item embeddings are cached ('' to not cache)")
    p.add_argument("--evaluate", action="store_true", help="score the methods on simulated users instead")
    p.add_argument("--seeds", default="0,1,2", help="--evaluate: simulation seeds")
    p.add_argument("--users", type=int, default=SimulationConfig.users, help="--evaluate: users per seed")
    p.add_argument("--popularity-exponent", type=float, default=SimulationConfig.popularity_exponent,
                   help="--evaluate: item popularity skew of the simulated likes (0: none)")
    p.add_argument("--styles", default=None, help="--evaluate: text styles to compare, comma-separated "
                                                  "(default: --style)")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    cache_dir = opts.cache_dir if str(opts.cache_dir) not in ("", ".") else None
    try:
        if opts.evaluate:
            styles = (opts.styles or opts.style).split(",")
            seeds = [int(s) for s in opts.seeds.split(",") if s.strip()]
            t0 = time.perf_counter()
            recommenders = {style: Recommender(opts.checkpoint, opts.items, pooling=opts.pooling, style=style,
                                               cache_dir=cache_dir) for style in styles}
            first = next(iter(recommenders.values()))
            print(f"{len(first.items):,} items, {first.truncated} longer than the context; embeddings "
                  + ", ".join(f"{s}: {r.cache_status}" for s, r in recommenders.items())
                  + f" ({time.perf_counter() - t0:.1f} s)", flush=True)
            config = SimulationConfig(users=opts.users, popularity_exponent=opts.popularity_exponent)
            results = evaluate(recommenders, first.items, seeds=seeds, config=config, k=opts.k)
            print(f"{config.users} simulated users x {len(seeds)} seeds; {config.likes} likes each "
                  f"({config.held_out} held out), noise {config.noise}, popularity exponent "
                  f"{config.popularity_exponent}; mean ± sd over seeds "
                  f"({time.perf_counter() - t0:.1f} s in all)")
            print(format_table(results, opts.k))
            return 0
        users = load_users(opts.likes) if opts.likes else []
        if opts.liked or opts.wrote:
            users.append(UserLikes("(command line)", tuple(i.strip() for i in opts.liked.split(",") if i.strip()),
                                   tuple(opts.wrote)))
        if not users:
            raise GptkitError("nothing to recommend for: give --liked IDS, --wrote TEXT, --likes FILE or --evaluate")
        recommender = Recommender(opts.checkpoint, opts.items, pooling=opts.pooling, style=opts.style,
                                  profile=opts.profile, cache_dir=cache_dir)
        for user in users:
            print_recommendations(user, recommender.recommend(liked_ids=user.liked, wrote=user.wrote, k=opts.k))
        return 0
    except (GptkitError, ValueError) as e:  # ValueError: a malformed --seeds
        print(f"recommend: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
