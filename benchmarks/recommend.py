"""Recommendation by text interest (examples/recommend): hit rate@10 and NDCG@10 of held-out likes of simulated
users, for the embedding recommender beside TF-IDF, popularity, random and category-oracle baselines.

Items: the 1,280 bundled fortunes in 8 categories. Users (examples/recommend/recommend_eval.py): each has one or two
favourite categories and 10 likes, 20% of them from other categories; 2 likes are held out. Two scenarios: no item
popularity skew (only the topic tells likes apart), and a Zipf-like skew (exponent 0.5), where "most liked" carries
signal of its own. Every method ranks every item the user has not liked; all methods see the same users.

Rows: the embedding recommender (`gptkit.LLM.embed`, mean pooling) with a mean and a max profile, on text as given
(raw), lower-cased, and in the pretraining corpus's style (lower case, punctuation spaced), centred by the items'
mean embedding, and raw without centring; TF-IDF cosine with the same two profiles (scikit-learn, the non-neural text
baseline); popularity (most liked in the training likes); random; category oracle (random items of the user's
favourite categories: what knowing the topic and nothing else earns).

The model: --checkpoint DIR (any checkpoint: a pretrained base or an embedding fine-tune), else the cached
`configs/base-mix.yaml` base of finetune_quality.py (OUT/finetune_base, pretrained once in ~6 minutes on 2 cores).

    python benchmarks/recommend.py                                   # ~3-4 min on 2 cores once the base exists
    python benchmarks/recommend.py --checkpoint DIR --users 500 --seeds 0     # another model, a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples" / "recommend")]  # the helpers and the example's modules
from _common import print_machine_info
from recommend_eval import SimulationConfig, evaluate, format_table
from recommender import Recommender

from gptkit import LLM

SCENARIOS = {"no popularity skew": 0.0, "popularity skew 0.5": 0.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="checkpoint or run directory (default: the cached "
                                                         "configs/base-mix.yaml base of finetune_quality.py)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="where the base and the cache go")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--users", type=int, default=2000, help="simulated users per seed")
    parser.add_argument("--styles", default="raw,lower,corpus")
    opts = parser.parse_args()

    print_machine_info()
    started = time.perf_counter()
    if opts.checkpoint is None:
        from finetune_quality import ensure_base  # pretrains the shared base only when it is not cached

        opts.checkpoint = ensure_base(opts.out, quick=False)
    llm = LLM.load(opts.checkpoint)
    cache = opts.out / "recommend_cache"
    recommenders = {}
    for style in opts.styles.split(","):
        recommenders[f"{style}, centred"] = Recommender(llm, None, style=style, cache_dir=cache)
    recommenders["raw, not centred"] = Recommender(llm, None, style="raw", center=False, cache_dir=cache)
    first = next(iter(recommenders.values()))
    print(f"checkpoint {opts.checkpoint}; {len(first.items):,} items, {first.truncated} cut to the "
          f"{llm.model.config.block_size}-token context; embeddings "
          + ", ".join(f"{name}: {r.cache_status}" for name, r in recommenders.items())
          + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    seeds = [int(s) for s in opts.seeds.split(",")]
    for scenario, exponent in SCENARIOS.items():
        config = replace(SimulationConfig(users=opts.users), popularity_exponent=exponent)
        t0 = time.perf_counter()
        results = evaluate(recommenders, first.items, seeds=seeds, config=config)
        print(f"\n{scenario}: {config.users} users x {len(seeds)} seeds, {config.likes} likes each "
              f"({config.held_out} held out), noise {config.noise}; mean ± sd over seeds "
              f"({time.perf_counter() - t0:.0f} s)")
        print(format_table(results))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
