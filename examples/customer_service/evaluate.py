"""Measure the customer-service assistant: Recall@1, Recall@5 and MRR of BM25, dense and hybrid retrieval on held-out
questions written as a customer would ask (questions.jsonl: paraphrases, not copies of the entries), the
"I don't know" rate on questions the knowledge base cannot answer, and the latency per question.

    python examples/customer_service/evaluate.py                                  # BM25 alone (no model)
    python examples/customer_service/evaluate.py --checkpoint out/pretrain/base-mix/best --checkpoint out/embed

Controls: a random ranking (what chance gives), and for each model the same dense retriever with the passage
vectors shuffled (a blind index: what dense retrieval scores when its vectors carry nothing about the passages).
The "I don't know" thresholds and the hybrid's fusion weights are tuned on one half of the questions (every other
answerable and every other unanswerable one, from the first) and reported on the other half, so those figures are
not fitted to the questions they are measured on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assistant import RRF_K, Assistant, AssistantConfig, AssistantError, KnowledgeBase, LocalBackend

HERE = Path(__file__).resolve().parent


@dataclass
class Question:
    text: str
    answers: list[str]


def load_questions(path: Path) -> list[Question]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Question(r["question"], list(r["answers"])) for r in rows]


def rank_of(ranked_ids: list[str], answers: list[str]) -> int | None:
    """1-based rank of the first correct passage, or None when it is not in the list."""
    return next((rank for rank, passage_id in enumerate(ranked_ids, 1) if passage_id in answers), None)


def retrieval_scores(ranks: list[int | None]) -> dict[str, float]:
    return {"recall_at_1": float(np.mean([r == 1 for r in ranks])),
            "recall_at_5": float(np.mean([r is not None and r <= 5 for r in ranks])),
            "mrr": float(np.mean([1.0 / r if r else 0.0 for r in ranks]))}


def evaluate_retriever(assistant: Assistant, questions: list[Question], retriever: str,
                       depth: int = 100) -> tuple[dict[str, float], float]:
    ranks, seconds = [], []
    for q in questions:
        started = time.perf_counter()
        ranked = assistant.retrieve(q.text, k=depth, retriever=retriever)
        seconds.append(time.perf_counter() - started)
        ranks.append(rank_of([i for i, _ in ranked], q.answers))
    return retrieval_scores(ranks), statistics.median(seconds)


def random_ranking_scores(kb_size: int, questions: list[Question], seed: int = 0, repeats: int = 20) -> dict:
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(repeats):
        ranks = []
        for q in questions:
            order = rng.permutation(kb_size)[:100]
            ranks.append(next((r for r, i in enumerate(order, 1) if i in q.gold_indices), None))  # type: ignore[attr-defined]
        runs.append(retrieval_scores(ranks))
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def top_scores(assistant: Assistant, question: str) -> tuple[float, float]:
    """The best BM25 score and the best cosine similarity (-1 without a model) for a question."""
    lexical = assistant.bm25.search(question, 1)
    dense = assistant.dense.search(question, 1)[0] if assistant.dense is not None else [(0, -1.0)]
    return (lexical[0][1] if lexical else 0.0), dense[0][1]


def calibrate(assistant: Assistant, dev: list[Question]) -> tuple[float, float]:
    """Thresholds (min_bm25, min_similarity) that best separate answerable from unanswerable dev questions:
    the highest balanced accuracy (mean of answered-when-answerable and refused-when-not)."""
    scores = [(top_scores(assistant, q.text), bool(q.answers)) for q in dev]
    named = [assistant.names_a_title(q.text) for q in dev]  # answered whatever the thresholds
    bm25_grid = sorted({s[0][0] for s in scores} | {0.0, 1e9})
    sim_grid = sorted({s[0][1] for s in scores} | {1.01}) if assistant.dense is not None else [1.01]
    best, best_value = (assistant.config.min_bm25, assistant.config.min_similarity), -1.0
    for min_bm25 in bm25_grid:
        for min_sim in sim_grid:
            answered = [n or b >= min_bm25 or s >= min_sim for n, ((b, s), _) in zip(named, scores)]
            hit = [a for a, (_, answerable) in zip(answered, scores) if answerable]
            refused = [not a for a, (_, answerable) in zip(answered, scores) if not answerable]
            value = (np.mean(hit) + np.mean(refused)) / 2
            if value > best_value + 1e-9:
                best, best_value = (min_bm25, min_sim), value
    return best


FUSION_GRID = [(w, k) for w in (0.1, 0.2, 0.3, 0.5, 1.0) for k in (10, 60)]


def tune_fusion(assistant: Assistant, dev: list[Question]) -> tuple[float, int]:
    """The hybrid's (dense_weight, rrf_k) with the best MRR on the dev questions."""
    best, best_mrr = (assistant.config.dense_weight, assistant.config.rrf_k), -1.0
    for weight, k in FUSION_GRID:
        assistant.config.dense_weight, assistant.config.rrf_k = weight, k
        mrr = evaluate_retriever(assistant, dev, "hybrid")[0]["mrr"]
        if mrr > best_mrr + 1e-9:
            best, best_mrr = (weight, k), mrr
    assistant.config.dense_weight, assistant.config.rrf_k = best
    return best


def refusal_figures(assistant: Assistant, questions: list[Question]) -> dict[str, float]:
    answerable = [q for q in questions if q.answers]
    unanswerable = [q for q in questions if not q.answers]
    return {"idk_on_unanswerable": float(np.mean([not assistant.knows(q.text) for q in unanswerable])),
            "idk_on_answerable": float(np.mean([not assistant.knows(q.text) for q in answerable]))}


def score_row(name: str, label: str, scores: dict[str, float], latency: float | None) -> list[str]:
    return [name, label, f"{scores['recall_at_1']:.3f}", f"{scores['recall_at_5']:.3f}", f"{scores['mrr']:.3f}",
            f"{1000 * latency:.1f}" if latency is not None else "-"]


def report_model(name: str, assistant: Assistant, questions: list[Question], rows: list[list[str]],
                 retrievers: tuple[str, ...]) -> None:
    answerable = [q for q in questions if q.answers]
    for retriever in retrievers:
        label = retriever if retriever != "hybrid" else \
            f"hybrid, dense weight {assistant.config.dense_weight:g}, k {assistant.config.rrf_k}"
        rows.append(score_row(name, label, *evaluate_retriever(assistant, answerable, retriever)))
    if "hybrid" in retrievers:  # plain reciprocal-rank fusion: equal weights, Cormack et al.'s k
        kept = assistant.config.dense_weight, assistant.config.rrf_k
        assistant.config.dense_weight, assistant.config.rrf_k = 1.0, RRF_K
        rows.append(score_row(name, f"hybrid, equal weights, k {RRF_K}",
                              *evaluate_retriever(assistant, answerable, "hybrid")))
        assistant.config.dense_weight, assistant.config.rrf_k = kept
    if assistant.dense is not None:  # the blind control: the same index with its vectors shuffled among passages
        kept = assistant.dense.vectors
        assistant.dense.vectors = kept[np.random.default_rng(0).permutation(len(kept))]
        scores, latency = evaluate_retriever(assistant, answerable, "dense")
        assistant.dense.vectors = kept
        rows.append(score_row(name, "dense, vectors shuffled (control)", scores, latency))


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", action="append", default=[], help="a model to measure (repeat to compare)")
    p.add_argument("--questions", type=Path, default=HERE / "questions.jsonl")
    p.add_argument("--kb", help="knowledge base (default: the bundled Jargon File); questions.jsonl fits the default")
    p.add_argument("--cache", default="out/customer_service")
    p.add_argument("--answers", type=int, default=5, help="full answers (with generation) timed per model")
    args = p.parse_args(argv)
    try:
        kb = KnowledgeBase.load(args.kb)
        questions = load_questions(args.questions)
        index = kb.index()
        unknown = sorted({a for q in questions for a in q.answers if a not in index})
        if unknown:
            raise AssistantError(f"{args.questions} names ids the knowledge base lacks: {', '.join(unknown[:5])}")
        for q in questions:
            q.gold_indices = {index[a] for a in q.answers}  # type: ignore[attr-defined]
        answerable = [q for q in questions if q.answers]
        unanswerable = [q for q in questions if not q.answers]
        if len(answerable) < 2 or len(unanswerable) < 2:
            raise AssistantError(f"{args.questions}: need at least 2 answerable questions and 2 with no answer "
                                 "(one of each to calibrate on, one to measure)")
        # every other question of each kind: the calibration half and the measured half hold both kinds
        dev, test = answerable[0::2] + unanswerable[0::2], answerable[1::2] + unanswerable[1::2]
        print(f"knowledge base: {kb.source}, {len(kb)} entries; {len(answerable)} answerable questions, "
              f"{len(questions) - len(answerable)} the knowledge base cannot answer")
        rows: list[list[str]] = []
        chance = random_ranking_scores(len(kb), answerable)
        rows.append(score_row("-", "random ranking (chance)", chance, None))
        halves: list[list[str]] = []
        refusals: list[list[str]] = []
        models: list[tuple[str, Assistant]] = [("-", Assistant(kb, None, AssistantConfig(retriever="bm25",
                                                                                          reply="extract"),
                                                               cache_dir=Path(args.cache)))]
        for path in args.checkpoint:
            models.append((path, Assistant(kb, LocalBackend.load(path), cache_dir=Path(args.cache))))
        for name, assistant in models:
            report_model(name, assistant, questions, rows, ("bm25",) if assistant.dense is None else
                         ("bm25", "dense", "hybrid"))
            if assistant.dense is not None:  # the fusion tuned on one half, scored on the other
                weight, k = tune_fusion(assistant, [q for q in dev if q.answers])
                measured = [q for q in test if q.answers]
                halves.append(score_row(name, "bm25", *evaluate_retriever(assistant, measured, "bm25")))
                halves.append(score_row(name, f"hybrid, dense weight {weight:g}, k {k}", *evaluate_retriever(
                    assistant, measured, "hybrid")))
            min_bm25, min_sim = calibrate(assistant, dev)
            assistant.config.min_bm25, assistant.config.min_similarity = min_bm25, min_sim
            figures = refusal_figures(assistant, test)
            refusals.append([name, f"{min_bm25:.2f}", f"{min_sim:.3f}" if min_sim <= 1 else "-",
                             f"{figures['idk_on_unanswerable']:.2f}", f"{figures['idk_on_answerable']:.2f}"])
        print("\nretrieval on the answerable questions (a hit: any of the question's listed entries)")
        print_table(["model", "retriever", "recall@1", "recall@5", "MRR", "ms/question"], rows)
        if halves:
            print("\nthe hybrid's fusion (dense weight, k) tuned on one half of the questions, scored on the other")
            print_table(["model", "retriever", "recall@1", "recall@5", "MRR", "ms/question"], halves)
        print("\n'I don't know', thresholds calibrated on one half of the questions, rates on the other")
        print_table(["model", "min BM25", "min cosine", "IDK rate, unanswerable", "IDK rate, answerable"], refusals)
        timed = [(name, a) for name, a in models if a.backend is not None]
        if timed and args.answers:
            print("\nfull answers (retrieval + generation), seconds per question, median")
            for name, assistant in timed:
                seconds = []
                for q in answerable[: args.answers]:
                    started = time.perf_counter()
                    assistant.answer(q.text)
                    seconds.append(time.perf_counter() - started)
                print(f"  {name}: {statistics.median(seconds):.2f} s")
    except AssistantError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
