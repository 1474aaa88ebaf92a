"""The `gptkit` command line: a table of commands, each parsing its flags, calling one library function and printing.

Each command's flags come from a dataclass through `tyro` (`gptkit.cli.args`): field names become
`--kebab-case` flags, field docstrings become `--help` text, and the same fields are the keys of a YAML
recipe (`--config recipe.yaml`, `gptkit.cli.recipes`), so a recipe and a command line can always say the
same thing. Precedence: built-in defaults < `--preset` < `--config` YAML < explicit flags. Library
modules are imported inside the commands, so `gptkit --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tyro

from gptkit.cli.args import (AugmentArgs, ChatArgs, ClassifyArgs, CompleteArgs, ConvertArgs, EvalArgs,
                             FinetuneFlags, GenerateArgs, ModerateArgs, PrepareArgs, PretrainFlags, QuantizeArgs,
                             ServeArgs, TalkArgs)
from gptkit.cli.recipes import finetune_defaults, pretrain_defaults
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError, require


def cmd_prepare(args: PrepareArgs) -> None:
    from gptkit.data.prepare import prepare

    keep_out = None
    if args.filter_moderation is not None:
        from gptkit.api import load_moderator
        from gptkit.safety.policy import DataFilter

        keep_out = DataFilter(load_moderator(args.moderation_model), args.filter_moderation)
    else:
        require(args.moderation_model is None, "--moderation-model goes with --filter-moderation THRESHOLD")
    meta = prepare(args.input, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                   val_fraction=args.val_fraction, text_field=args.text_field, workers=args.workers,
                   resume=args.resume, document_filter=keep_out)
    splits = meta["splits"]
    print(f"prepared {args.out}: vocab {meta['vocab_size']}, "
          + ", ".join(f"{name} {s['n_tokens']:,} tokens ({s['n_bytes']:,} bytes)" for name, s in splits.items()))
    if "filtered" in meta:
        filtered = meta["filtered"]
        print(f"left out {filtered['documents']:,} document(s) ({filtered['bytes']:,} bytes) with "
              f"{filtered['filter']}; listed in {args.out / filtered['log']}")


def cmd_pretrain(args: PretrainFlags, model_overrides: dict[str, Any]) -> None:
    from gptkit.api import LLM
    from gptkit.training.pretrain import pretrain

    outcome = pretrain(args, model_overrides)
    result = outcome.train
    if result.interrupted:
        sys.exit(130)
    if not outcome.is_main:
        return
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items() if k != "val_tokens")
    print(f"done: step {result.step}, {metrics}; best checkpoint {args.out / 'best'}")
    if args.sample_tokens > 0:
        llm = LLM.load(args.out)
        print("--- sample ---")
        print(llm.generate("\n", max_tokens=args.sample_tokens, temperature=0.8, top_k=50, seed=args.train.seed)[0])


def cmd_generate(args: GenerateArgs) -> None:
    from gptkit.api import LLM
    from gptkit.prompting.conditions import read_conditions, render_conditions

    if args.conditions is not None:
        args.prompt = render_conditions(read_conditions(args.conditions), args.prompt)
    llm = LLM.load(args.checkpoint, device=args.device, dtype=args.dtype, quantize=args.quantize)
    params = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                  frequency_penalty=args.frequency_penalty, seed=args.seed, stop=args.stop,
                  speculative_tokens=args.speculative_tokens)
    for flag, argument in (("image", "images"), ("audio", "audio"), ("video", "video")):
        if getattr(args, flag):
            params[argument] = list(getattr(args, flag))
    if args.stream and args.n == 1:
        pieces = llm.stream(args.prompt, **params)  # bad parameters raise here, before anything is printed
        sys.stdout.write(args.prompt)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    for i, text in enumerate(llm.generate(args.prompt, n=args.n, **params)):
        if args.n > 1:
            print(f"--- sample {i + 1} ---")
        print(args.prompt + text)


def cmd_eval(args: EvalArgs) -> None:
    from gptkit.api import LLM

    llm = LLM.load(args.checkpoint, device=args.device, dtype=args.dtype, quantize=args.quantize)
    print(json.dumps(llm.evaluate(args.data, split=args.split, batch_size=args.batch_size), indent=2))


def cmd_convert(args: ConvertArgs) -> None:
    from gptkit.interop import export_hf, import_hf

    require(sum(x is not None for x in (args.from_hf, args.to_hf, args.to_gguf, args.from_gguf)) == 1,
            "pass exactly one of --from-hf HF_DIR or --from-gguf FILE (import), --to-hf CHECKPOINT or --to-gguf "
            "CHECKPOINT (export)")
    if args.from_gguf is not None:
        from gptkit.interop.gguf import import_gguf

        out = import_gguf(args.from_gguf, args.out, overwrite=args.overwrite)
        config = ModelConfig.load(out / "config.json")
        print(f"imported {args.from_gguf} -> gptkit checkpoint {out} ({config.n_layer} layers, n_embd "
              f"{config.n_embd}, vocab {config.vocab_size}); try: gptkit generate --checkpoint {out}")
    elif args.to_gguf is not None:
        from gptkit.interop.gguf import export_gguf

        out = export_gguf(args.to_gguf, args.out, outtype=args.outtype, overwrite=args.overwrite)
        print(f"exported {args.to_gguf} -> {out} ({args.outtype}, {out.stat().st_size / 1e6:.1f} MB); run it with "
              f"llama.cpp: llama-cli -m {out}")
    elif args.from_hf is not None:
        out = import_hf(args.from_hf, args.out, overwrite=args.overwrite)
        config = ModelConfig.load(out / "config.json")
        print(f"imported {args.from_hf} -> gptkit checkpoint {out} ({config.n_layer} layers, n_embd "
              f"{config.n_embd}, vocab {config.vocab_size}); try: gptkit generate --checkpoint {out}")
    else:
        out = export_hf(args.to_hf, args.out, overwrite=args.overwrite)
        architecture = json.loads((out / "config.json").read_text())["architectures"][0]
        print(f"exported {args.to_hf} -> {architecture} in {out}; load it with "
              f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


def cmd_finetune(args: FinetuneFlags) -> None:
    from gptkit.finetune.job import run_finetune

    summary = run_finetune(args)
    runs = summary.get("run") or summary.get("self_trained")
    if args.task == "classify":
        test = runs["test"]
        line = (f"test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro avg']['f1']:.4f}; "
                f"{runs['trainable_parameters']:,} of {runs['total_parameters']:,} parameters trained")
        if "baseline" in summary:
            line += f" (with {summary['pseudo_labelled']} pseudo-labels; " \
                    f"{summary['baseline']['test']['accuracy']:.4f} from the labelled subset alone)"
    elif args.task == "multimodal":
        line = (f"test accuracy {runs['test_accuracy']:.4f} ({runs['test_rows']} rows; {runs['modality']} zeroed: "
                f"{runs['test_accuracy_media_zeroed']:.4f}); {runs['trainable_parameters']:,} of "
                f"{runs['total_parameters']:,} parameters trained")
    elif args.task == "embed":
        final, base = runs["final"], runs["base"]
        line = (f"validation retrieval recall@1 {final['val_recall_at_1']:.4f}, MRR {final['val_mrr']:.4f} "
                f"(base model {base['val_recall_at_1']:.4f}, {base['val_mrr']:.4f}; {runs['val_pairs']} pairs)")
    else:
        line = ", ".join(f"{k} {v:.4f}" for k, v in runs["final"].items() if k != "val_tokens")
    print(f"done: {line}; best checkpoint {args.out / 'best'}, report {args.out / 'report.json'}")


def _prompt_template(args: ClassifyArgs):
    from gptkit.prompting.classify import PromptTemplate

    words = {}
    for pair in args.label_words:
        label, sep, word = pair.partition("=")
        require(sep == "=" and label, f"--label-words takes LABEL=WORD pairs, got {pair!r}")
        words[label] = word
    path = Path(args.template)
    if args.template.endswith((".yaml", ".yml", ".json")):
        template = PromptTemplate.from_file(path)
        return PromptTemplate.from_dict({**template.to_dict(), **({"label_words": words} if words else {}),
                                         **({"instructions": args.instructions} if args.instructions else {})})
    # Shells pass a typed \n as two characters; in a template it can only mean a newline.
    unescape = lambda text: text.replace("\\n", "\n").replace("\\t", "\t")  # noqa: E731
    return PromptTemplate(unescape(args.template), instructions=unescape(args.instructions), label_words=words)


def cmd_classify(args: ClassifyArgs) -> None:
    from gptkit.api import LLM
    from gptkit.evaluation.classification import format_classification_report
    from gptkit.finetune.splits import classification_splits, select_split
    from gptkit.prompting.classify import choose_examples

    require(bool(args.text) != (args.data is not None), "pass texts with --text, or a labelled file with --data")
    llm = LLM.load(args.checkpoint)
    splits = None
    if args.data is not None:
        splits = classification_splits(args.data, text_column=args.text_column, label_column=args.label_column,
                                       val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                                       seed=args.split_seed)
    labels = list(args.labels) or (list(splits.train.labels) if splits else None)
    options: dict[str, Any] = {}
    if llm.classifier is None:
        require(labels, "this checkpoint has no classification head: pass --labels (or --data) to classify "
                        "by prompting")
        require(args.shots == 0 or splits is not None, "--shots draws examples from --data's training split")
        shots = choose_examples(splits.train, args.shots, seed=args.seed) if args.shots else []
        options = dict(labels=labels, template=_prompt_template(args), shots=shots, calibrate=args.calibrate,
                       normalize=args.normalize)
    if splits is None:
        for text, prediction in zip(args.text, llm.classify(args.text, **options)):
            print(json.dumps({"text": text, "label": prediction.label, "probs": prediction.probs}))
        return
    report = llm.classification_report(select_split(splits, args.split, limit=args.limit, seed=args.seed), **options)
    print(format_classification_report(report))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")


def cmd_augment(args: AugmentArgs) -> None:
    from gptkit.data.augment.counterfactual import write_counterfactuals

    require(args.counterfactual, "pass --counterfactual (counterfactual edits are the one augmentation so far)")
    flips = {}
    for pair in args.flip_labels:
        label, sep, flipped = pair.partition("=")
        require(sep == "=" and label and flipped, f"--flip-labels takes LABEL=FLIPPED pairs, got {pair!r}")
        flips[label] = flipped
    split = lambda text: [part for part in text.replace(",", " ").split() if part]  # noqa: E731
    summary = write_counterfactuals(args.data, args.out, kinds=split(args.kinds), rules=split(args.rules) or None,
                                    text_column=args.text_column, label_column=args.label_column,
                                    edits_only=args.edits_only, flip_labels=flips or None)
    for rule, count in summary["by_rule"].items():
        print(f"  {rule:<16} {count:>7,} edits")
    print(f"wrote {summary['out']}: {summary['written']:,} rows ({summary['edits']:,} edits of "
          f"{summary['rows_edited']:,} of the {summary['rows']:,} rows of {summary['source']}"
          f"{'' if args.edits_only else ', originals first'})")


def cmd_moderate(args: ModerateArgs) -> None:
    if args.train:
        from gptkit.finetune.moderation_job import ModeratorTrainArgs, train_moderator

        require(args.checkpoint is not None, "--train fine-tunes a base checkpoint: pass --checkpoint BASE "
                                             "(e.g. out/pretrain/base-mix, from gptkit pretrain --config "
                                             "configs/base-mix.yaml)")
        require(not args.text and args.data is None, "--train moderates nothing: drop --text/--data")
        summary = train_moderator(ModeratorTrainArgs(
            checkpoint=args.checkpoint, out=args.out, method=args.method, max_iters=args.max_iters,
            text_style=args.text_style, max_fpr=args.max_fpr, overwrite=args.overwrite))
        test = summary["moderation"]["test"]
        print(f"done: threshold {summary['moderation']['threshold']:.3f}; test precision {test['precision']:.3f}, "
              f"recall {test['recall']:.3f}, F1 {test['f1']:.3f}, ROC-AUC {test['roc_auc']:.3f}, false-positive "
              f"rate {test['fpr']:.3f}; use it with `gptkit moderate --checkpoint {args.out}` or "
              f"`gptkit serve --moderation-model {args.out}`")
        return
    from gptkit.api import load_moderator
    from gptkit.safety.policy import moderate_file

    require(bool(args.text) != (args.data is not None), "pass texts with --text, or a file with --data (or --train)")
    moderator = load_moderator(args.checkpoint, threshold=args.threshold)
    if args.data is None:
        for text, result in zip(args.text, moderator.moderate(args.text)):
            print(json.dumps({"text": text, **result.to_dict()}, ensure_ascii=False))
        return
    replaced = []
    for item in moderate_file(moderator, args.data, text_field=args.text_field):
        if item.replaced:
            replaced.append(item.line)
        print(json.dumps({"line": item.line, **item.result.to_dict()}, ensure_ascii=False), flush=True)
    if replaced:
        print(f"gptkit moderate: warning: {len(replaced)} line(s) of {args.data} are not valid UTF-8 (first: line "
              f"{replaced[0]}); they were moderated with their invalid bytes replaced by U+FFFD", file=sys.stderr)


def _backend(args: TalkArgs, chat_template: str = "auto"):
    from gptkit.serve.client import LocalBackend, RemoteBackend

    require((args.checkpoint is None) != (args.url is None), "pass exactly one of --checkpoint DIR or --url URL")
    if args.url is not None:
        return RemoteBackend(args.url, api_key=args.api_key or os.environ.get("GPTKIT_API_KEY"), model=args.model)
    from gptkit.api import LLM

    return LocalBackend(LLM.load(args.checkpoint, quantize=args.quantize), chat_template)  # type: ignore[arg-type]


def _sampling(args: TalkArgs) -> dict[str, Any]:
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.top_k is not None:
        sampling["top_k"] = args.top_k
    return sampling


def _sampling(args: TalkArgs) -> dict[str, Any]:
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.top_k is not None:
        sampling["top_k"] = args.top_k
    return sampling


def cmd_chat(args: ChatArgs) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    backend = _backend(args, args.chat_template)
    system_prompt = _system_prompt(args.system)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    # Media go with the first user message (the model reads them once, where they are in the conversation).
    media = [{"type": kind, kind: str(path)} for kind, paths in (("image", args.image), ("audio", args.audio))
             for path in paths]
    for part in media:
        require(Path(part[part["type"]]).is_file(), f"--{part['type']} {part[part['type']]} is not a file")
    history: list[dict[str, Any]] = []
    interactive = sys.stdin.isatty()
    if interactive:
        print("gptkit chat: type a message; /reset clears the history, /exit (or Ctrl-D) leaves.", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            history = []
            continue
        first = media and not any(m["role"] == "user" for m in history)
        history.append({"role": "user", "content": [*media, {"type": "text", "text": line}] if first else line})
        pieces = []
        try:
            for piece in backend.chat(system + history, **_sampling(args)):
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # stop this reply, keep the conversation
            pass
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(pieces)})


def cmd_complete(args: CompleteArgs) -> None:
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    backend = _backend(args)
    sampling = _sampling(args)
    if args.stop:
        sampling["stop"] = args.stop
    for piece in backend.complete(prompt, **sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_serve(args: ServeArgs) -> None:
    from gptkit.api import LLM
    from gptkit.serve.engine import EngineConfig
    from gptkit.serve.run import run_server

    import torch

    # Only the engine's worker thread runs parallel torch ops (see EngineConfig.threads): this thread loads
    # the model on one, so that it never starts an OpenMP team of its own.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = EngineConfig(max_batch=args.max_batch, max_queue=args.max_queue, request_timeout=args.request_timeout,
                          prefix_cache_tokens=args.prefix_cache_tokens, speculative_tokens=args.speculative_tokens,
                          threads=threads)
    config.validate()
    require(0 <= args.port <= 65535, f"--port must be in 0..65535, got {args.port}")
    llm = LLM.load(args.checkpoint, device=args.device, dtype=args.dtype, quantize=args.quantize)
    llm.require_language_model()
    name = args.model_name or Path(args.checkpoint).resolve().name
    api_key = args.api_key if args.api_key is not None else os.environ.get("GPTKIT_API_KEY") or None
    guard = _request_guard(args)

    def announce(base: str) -> None:
        print(f"gptkit serve: {name} at {base}/v1 (OpenAI API{', API key required' if api_key else ''}; "
              f"chat page {base}/, docs {base}/docs, metrics {base}/metrics)", flush=True)

    run_server(llm.model, llm.tokenizer, model_name=name, host=args.host, port=args.port, engine_config=config,
               api_key=api_key, max_body_bytes=args.max_body_bytes, chat_template=args.chat_template,
               log_level=args.log_level, multimodal=llm.multimodal, max_media_bytes=args.max_media_bytes,
               on_listen=announce, guard=guard, system_prompt=_system_prompt(args.system_prompt),
               embedding_style=llm.embedding_style)


def _system_prompt(value: str | None) -> str | None:
    from gptkit.safety.policy import read_system_prompt

    return read_system_prompt(value)


def _request_guard(args: ServeArgs):
    """The server's moderation (--moderation, --moderation-model, --refusal-message), or None."""
    if args.moderation == "none":
        require(args.moderation_model is None and args.refusal_message is None,
                "--moderation-model and --refusal-message need --moderation input, output or both")
        return None
    from gptkit.api import load_moderator
    from gptkit.safety.policy import RequestGuard

    require(args.refusal_message is None or args.moderation in ("input", "both"),
            "--refusal-message answers flagged prompts: it needs --moderation input or both")
    return RequestGuard(load_moderator(args.moderation_model, device=args.device), args.moderation,
                        args.refusal_message)


def cmd_quantize(args: QuantizeArgs) -> None:
    from gptkit.adapt.quantize import QuantizeConfig, quantize_model, quantized_bytes, write_quantized
    from gptkit.api import LLM

    config = QuantizeConfig(args.mode, args.group_size)
    config.validate()
    require(args.overwrite or not args.out.exists(), f"{args.out} exists; pass --overwrite to replace it")
    llm = LLM.load(args.checkpoint)
    llm.require_language_model()
    require(llm.multimodal is None, "gptkit quantize takes text checkpoints; load a multimodal one with "
                                    "LLM.load(path, quantize=...) instead")
    before = quantized_bytes(llm.model)
    quantize_model(llm.model, config)
    from gptkit.checkpoint import TRAIN_CONFIG_FILE

    out = write_quantized(llm.model, llm.tokenizer, args.out, carry=[Path(llm.path) / TRAIN_CONFIG_FILE])
    print(f"quantized {args.checkpoint} to {args.mode} -> {out} (weights {before / 1e6:.1f} MB -> "
          f"{quantized_bytes(llm.model) / 1e6:.1f} MB); try: gptkit generate --checkpoint {out}")


COMMANDS: dict[str, tuple[type, Callable[..., None]]] = {
    "prepare": (PrepareArgs, cmd_prepare),
    "pretrain": (PretrainFlags, cmd_pretrain),
    "generate": (GenerateArgs, cmd_generate),
    "eval": (EvalArgs, cmd_eval),
    "convert": (ConvertArgs, cmd_convert),
    "finetune": (FinetuneFlags, cmd_finetune),
    "classify": (ClassifyArgs, cmd_classify),
    "augment": (AugmentArgs, cmd_augment),
    "chat": (ChatArgs, cmd_chat),
    "complete": (CompleteArgs, cmd_complete),
    "serve": (ServeArgs, cmd_serve),
    "quantize": (QuantizeArgs, cmd_quantize),
    "moderate": (ModerateArgs, cmd_moderate),
}


def usage() -> str:
    lines = ["usage: gptkit COMMAND [--help] [FLAGS]", "", "commands:"]
    for name, (args_type, _) in COMMANDS.items():
        doc = (args_type.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:<10} {doc}")
    lines.append("\nRun `gptkit COMMAND --help` for a command's flags.")
    return "\n".join(lines)


def run(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise GptkitError(f"unknown command {name!r}; choose one of: {', '.join(COMMANDS)} (see gptkit --help)")
    args_type, command = COMMANDS[name]
    if name == "pretrain":
        defaults, recipe_model = pretrain_defaults(rest)
        args = tyro.cli(PretrainFlags, args=rest, default=defaults, prog="gptkit pretrain")
        # Model fields the user changed on the command line, on top of the preset and recipe; derived
        # fields (intermediate_size, n_kv_head) are recomputed from them rather than kept stale.
        flags = {f.name: getattr(args.model, f.name) for f in dataclasses.fields(ModelConfig)
                 if getattr(args.model, f.name) != getattr(defaults.model, f.name)}
        command(args, {**recipe_model, **flags})
    elif name == "finetune":
        command(tyro.cli(FinetuneFlags, args=rest, default=finetune_defaults(rest), prog="gptkit finetune"))
    else:
        command(tyro.cli(args_type, args=rest, prog=f"gptkit {name}"))


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        run(sys.argv[1:] if argv is None else argv)
    except GptkitError as e:
        print(f"gptkit: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("gptkit: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`gptkit generate ... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        sys.exit(141)
