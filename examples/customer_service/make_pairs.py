"""Training pairs for the assistant's retriever, made from the knowledge base itself, for
`gptkit finetune --task embed`: no labelled questions needed.

    python examples/customer_service/make_pairs.py --out out/cs_pairs.jsonl            # the bundled Jargon File
    gptkit finetune --checkpoint out/bench/finetune_base --task embed --data out/cs_pairs.jsonl \\
        --text-style english_mix --method full --out out/cs_embed

Two kinds of pair per entry, each ending in the passage as the assistant indexes it ("title: text"):
- a question naming the title ("What does 'logic bomb' mean?"), for customers who know the word;
- a span of the passage's own words, a third to two thirds of it, taken at random (the inverse cloze task of Lee
  et al., 2019), for customers who describe the thing instead: the model learns to find a passage from part of
  what it says.
The held-out questions of evaluate.py are written by hand and never enter these pairs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from assistant import AssistantError, KnowledgeBase

QUESTIONS = ("What does '{title}' mean?", "What is {title}?", "Can you explain {title}?", "Tell me about {title}.")


def knowledge_base_pairs(kb: KnowledgeBase, *, spans: int = 2, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for passage in kb.passages:
        target = passage.indexed_text()
        if passage.title:
            pairs.append({"query": rng.choice(QUESTIONS).format(title=passage.title), "positive": target})
        words = passage.text.split()
        for _ in range(spans if len(words) >= 6 else 0):
            length = rng.randint(max(3, len(words) // 3), max(3, 2 * len(words) // 3))
            start = rng.randrange(len(words) - length + 1)
            pairs.append({"query": " ".join(words[start:start + length]), "positive": target})
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kb", help="knowledge base (default: the bundled Jargon File)")
    p.add_argument("--out", type=Path, required=True, help="the pairs' JSONL file")
    p.add_argument("--spans", type=int, default=2, help="span queries per entry")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        kb = KnowledgeBase.load(args.kb)
    except AssistantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pairs = knowledge_base_pairs(kb, spans=args.spans, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    print(f"{len(pairs)} pairs from {len(kb)} entries of {kb.source} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
