"""The `gptkit` command line.

Each command's flags come from a dataclass through `tyro`: field names become `--kebab-case`
flags, field docstrings become `--help` text, and the same fields are the keys of a YAML recipe
(`--config recipe.yaml`), so a recipe and a command line can always say the same thing.
Precedence: built-in defaults < `--preset` < `--config` YAML < explicit flags.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
import yaml

from gptkit.config import PRESETS, ModelConfig
from gptkit.errors import GptkitError, require
from gptkit.finetune import FinetuneArgs
from gptkit.training.loop import TrainConfig

# ------------------------------------------------------------------------------------------------
# prepare


def _cpu_cores() -> int:
    from gptkit.data.parallel import cpu_cores

    return cpu_cores()


@dataclass
class PrepareArgs:
    """Tokenise text into memory-mapped train/val token files (train.bin, val.bin, meta.json, tokenizer.json)."""

    input: list[str]
    """Text files, .jsonl or .parquet files, directories of them (searched recursively), or a bundled corpus name (tiny_shakespeare, english_mix)."""
    out: Path
    """Directory to write the prepared dataset to."""
    tokenizer: str = "char"
    """char, bpe (trained on the input), gpt2 (GPT-2's 50,257-token BPE, bundled), or a path to a tokenizer.json (or a directory holding one)."""
    vocab_size: int = 512
    """Vocabulary size when training a BPE tokenizer."""
    val_fraction: float = 0.1
    """Share of the text held out for validation."""
    text_field: str = "text"
    """Field (.jsonl) or column (.parquet) holding the text."""
    workers: int = field(default_factory=_cpu_cores)
    """Processes that tokenise in parallel (default: one per CPU core); inputs under 8 MB use this many threads in one process instead. The output is the same for any number."""
    resume: bool = False
    """Continue an interrupted or killed prepare of the same inputs into OUT from where it stopped, instead of starting over."""


def cmd_prepare(args: PrepareArgs) -> None:
    from gptkit.data.prepare import prepare

    meta = prepare(args.input, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                   val_fraction=args.val_fraction, text_field=args.text_field, workers=args.workers,
                   resume=args.resume)
    splits = meta["splits"]
    print(f"prepared {args.out}: vocab {meta['vocab_size']}, "
          + ", ".join(f"{name} {s['n_tokens']:,} tokens ({s['n_bytes']:,} bytes)" for name, s in splits.items()))


# ------------------------------------------------------------------------------------------------
# pretrain


@dataclass
class PretrainArgs:
    """Pretrain a GPT from scratch (default: the tiny model on the bundled Shakespeare corpus, on CPU, in minutes)."""

    preset: Annotated[str, tyro.conf.arg(help=f"Model preset: {', '.join(PRESETS)}.")] = "tiny"
    config: Path | None = None
    """YAML recipe whose keys are these flags' names (model fields under `model:`)."""
    out: Path = Path("out/pretrain/tiny")
    """Run directory: checkpoints best/ and last/, log.jsonl, tensorboard/, loss.png."""
    data: str = "tiny_shakespeare"
    """A prepared dataset directory, a text/.jsonl file or directory (prepared into OUT/data), or a bundled corpus name."""
    tokenizer: str = "bpe"
    """When DATA needs preparing: char, bpe, gpt2, or a tokenizer.json path."""
    vocab_size: int = 2048
    """When DATA needs preparing with a BPE tokenizer: its vocabulary size."""
    resume: bool = False
    """Continue the run in OUT from its last checkpoint (exactly: same data order, optimizer and RNG state)."""
    overwrite: bool = False
    """Start afresh even if OUT already holds a run."""
    sample_tokens: int = 200
    """Tokens to sample from the best checkpoint at the end (0 to skip)."""
    # The default recipe, tuned with benchmarks/time_to_loss.py: on the bundled corpus a 2,048-token BPE
    # beats characters at equal compute, and small batches at a high learning rate learn fastest.
    train: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=lambda: TrainConfig(
        max_iters=800, batch_size=16, learning_rate=2e-3, warmup_iters=30, eval_interval=100))
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("tiny"))


def cmd_pretrain(args: PretrainArgs, model_overrides: dict[str, Any]) -> None:
    import torch

    from gptkit.checkpoint import resolve_checkpoint
    from gptkit.data.dataset import TokenDataset
    from gptkit.model import GPT
    from gptkit.training.distributed import process_group
    from gptkit.training.loop import pick_device, train
    from gptkit.training.tasks import CausalLMTask

    run_dir = args.out
    # Under torchrun every process runs this; rank 0 alone prepares data, prints and samples.
    with process_group(args.train.strategy, pick_device(args.train.device)) as d:
        if args.resume:
            require((run_dir / "last").exists() or (run_dir / ".last.old").exists(),
                    f"nothing to resume: {run_dir} has no last/ checkpoint (drop --resume to start a new run)")
            last = resolve_checkpoint(run_dir / "last")
            config = ModelConfig.load(last / "config.json")
            saved = yaml.safe_load((last / "train_config.json").read_text())
            dataset = TokenDataset(saved["data_dir"])
        else:
            existing = [p for p in (run_dir / "last", run_dir / "best") if p.exists()]
            require(not existing or args.overwrite,
                    f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to start afresh, "
                    "or choose another --out")
            with d.main_first():
                dataset = resolve_dataset(args.data, run_dir / "data", tokenizer=args.tokenizer,
                                          vocab_size=args.vocab_size)
            model_overrides = {**model_overrides, "vocab_size": model_overrides.get("vocab_size", dataset.vocab_size)}
            config = ModelConfig.from_dict({**PRESETS.get(args.preset, {}), "name": args.preset, **model_overrides})
        require(config.vocab_size >= dataset.vocab_size,
                f"the model's vocab_size {config.vocab_size} is smaller than the tokenizer's {dataset.vocab_size}")
        torch.manual_seed(args.train.seed)
        model = GPT(config)
        if d.is_main:
            print(f"model: {config.name}, {model.num_parameters() / 1e6:.2f}M parameters "
                  f"({model.num_parameters(exclude_embeddings=True) / 1e6:.2f}M without embeddings); "
                  f"data: {dataset.path} ({dataset.n_tokens('train'):,} train tokens)"
                  + (f"; {d.world_size} processes ({d.strategy}), global batch "
                     f"{args.train.batch_size * d.world_size * args.train.grad_accum_steps} sequences"
                     if d.world_size > 1 else ""), file=sys.stderr)
        task = CausalLMTask(dataset, block_size=config.block_size, batch_size=args.train.batch_size,
                            seed=args.train.seed, eval_iters=args.train.eval_iters)
        result = train(model, task, args.train, tokenizer=dataset.tokenizer, run_dir=run_dir, resume=args.resume,
                       extra_config={"data_dir": str(Path(dataset.path).resolve()), "preset": args.preset})
    if result.interrupted:
        sys.exit(130)
    if not d.is_main:
        return
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items() if k != "val_tokens")
    print(f"done: step {result.step}, {metrics}; best checkpoint {run_dir / 'best'}")
    if args.sample_tokens > 0:
        from gptkit.api import LLM

        llm = LLM.load(run_dir)
        print("--- sample ---")
        print(llm.generate("\n", max_tokens=args.sample_tokens, temperature=0.8, top_k=50, seed=args.train.seed)[0])


def resolve_dataset(data: str, prepare_dir: Path, *, tokenizer: str, vocab_size: int):
    """A prepared dataset: `data` itself if it is one, else `data` prepared into `prepare_dir` (reused if done)."""
    from gptkit.data.dataset import TokenDataset
    from gptkit.data.prepare import prepare, resolve_sources
    from gptkit.data.resume import fingerprint

    if (Path(data) / "meta.json").is_file():
        return TokenDataset(data)
    # Remember what was asked for, so a rerun reuses the prepared data instead of preparing it again;
    # the files' sizes and times are part of it, so an edited corpus is prepared afresh.
    files = fingerprint((s.path for s in resolve_sources([data])), {})["files_sha256"]
    wanted = json.dumps({"data": data, "tokenizer": tokenizer, "vocab_size": vocab_size, "files": files})
    request_file = prepare_dir / "request.json"
    if (prepare_dir / "meta.json").is_file() and request_file.is_file() and request_file.read_text() == wanted:
        return TokenDataset(prepare_dir)
    prepare([data], prepare_dir, tokenizer=tokenizer, vocab_size=vocab_size)
    request_file.write_text(wanted)
    return TokenDataset(prepare_dir)


# ------------------------------------------------------------------------------------------------
# generate


@dataclass
class GenerateArgs:
    """Sample text from a checkpoint."""

    checkpoint: Path
    """A checkpoint directory, or a run directory (then its best checkpoint)."""
    prompt: str = ""
    """Text to continue (empty: start from the beginning-of-text token)."""
    max_tokens: int = 200
    temperature: float = 0.8
    """0 means greedy decoding."""
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    n: int = 1
    """Samples to draw."""
    stop: list[str] = field(default_factory=list)
    """Stop sequences: generation ends before the first one (several may be given)."""
    stream: bool = True
    """Print tokens as they are generated (for n=1)."""
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of weights, activations and KV cache: bfloat16 halves memory and, on CPUs with AMX, decodes batches of 8+ ~1.5x faster (one sequence is slower)."""


def cmd_generate(args: GenerateArgs) -> None:
    from gptkit.api import LLM

    llm = LLM.load(args.checkpoint, device=args.device, dtype=args.dtype)
    params = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                  frequency_penalty=args.frequency_penalty, seed=args.seed, stop=args.stop)
    if args.stream and args.n == 1:
        sys.stdout.write(args.prompt)
        for piece in llm.stream(args.prompt, **params):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    for i, text in enumerate(llm.generate(args.prompt, n=args.n, **params)):
        if args.n > 1:
            print(f"--- sample {i + 1} ---")
        print(args.prompt + text)


# ------------------------------------------------------------------------------------------------
# eval


@dataclass
class EvalArgs:
    """Loss, perplexity and bits per byte of a checkpoint on a prepared split or a text file."""

    checkpoint: Path
    """A checkpoint directory, or a run directory (then its best checkpoint)."""
    data: str | None = None
    """A prepared dataset directory (its --split is used) or a UTF-8 text file; default: the data it was trained on."""
    split: str = "val"
    batch_size: int = 16
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision to evaluate in (to see what bfloat16 or float16 inference costs in loss)."""


def cmd_eval(args: EvalArgs) -> None:
    import numpy as np
    import torch

    from gptkit.checkpoint import TRAIN_CONFIG_FILE, load_model, resolve_checkpoint
    from gptkit.data.dataset import TokenDataset
    from gptkit.evaluation import evaluate_tokens

    checkpoint = resolve_checkpoint(args.checkpoint)
    model, tokenizer = load_model(checkpoint, device=args.device, dtype=args.dtype)
    data = args.data
    if data is None:
        saved = checkpoint / TRAIN_CONFIG_FILE
        require(saved.is_file(), f"{checkpoint} does not record its training data; pass --data DIR|FILE")
        data = json.loads(saved.read_text())["data_dir"]
    path = Path(data)
    require(path.exists(), f"--data {data} does not exist")
    if (path / "meta.json").is_file():
        dataset = TokenDataset(path)
        require(dataset.tokenizer.hf.to_str() == tokenizer.hf.to_str(),
                f"{path} was tokenised with a different tokenizer than {checkpoint}; pass the text file instead")
        tokens, n_bytes = dataset.split(args.split), dataset.n_bytes(args.split)
    else:
        require(path.is_file(), f"--data {data} is neither a prepared dataset (no meta.json) nor a text file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise GptkitError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        require(text, f"{path} is empty")
        tokens, n_bytes = np.asarray(tokenizer.encode(text), dtype=np.int64), len(text.encode())
    require(len(tokens) >= 2, f"{data} holds fewer than 2 tokens: nothing to evaluate")
    metrics = evaluate_tokens(model, tokens, n_bytes, block_size=model.config.block_size,
                              batch_size=args.batch_size, device=torch.device(args.device))
    print(json.dumps({"checkpoint": str(checkpoint), "data": str(data), "loss": metrics["val_loss"],
                      "perplexity": metrics["val_ppl"], "bits_per_byte": metrics["val_bpb"],
                      "tokens": int(metrics["val_tokens"])}, indent=2))


# ------------------------------------------------------------------------------------------------
# convert


@dataclass
class ConvertArgs:
    """Convert a local Hugging Face model directory to a gptkit checkpoint (--from-hf) or back (--to-hf)."""

    out: Path
    """Directory to write: a gptkit checkpoint (with --from-hf) or a Hugging Face model directory (with --to-hf)."""
    from_hf: Path | None = None
    """A local Hugging Face directory (config.json, *.safetensors or pytorch_model.bin, tokenizer.json) of GPT-2,
    Llama (SmolLM2, TinyLlama) or Qwen2. gptkit never downloads: fetch Hub models first (`hf download`)."""
    to_hf: Path | None = None
    """A gptkit checkpoint or run directory, written for transformers' AutoModelForCausalLM and AutoTokenizer."""
    overwrite: bool = False
    """Replace OUT if it already exists."""


def cmd_convert(args: ConvertArgs) -> None:
    from gptkit.interop import export_hf, import_hf

    require((args.from_hf is None) != (args.to_hf is None),
            "pass exactly one of --from-hf HF_DIR (import) or --to-hf CHECKPOINT (export)")
    if args.from_hf is not None:
        out = import_hf(args.from_hf, args.out, overwrite=args.overwrite)
        config = ModelConfig.load(out / "config.json")
        print(f"imported {args.from_hf} -> gptkit checkpoint {out} ({config.n_layer} layers, n_embd "
              f"{config.n_embd}, vocab {config.vocab_size}); try: gptkit generate --checkpoint {out}")
    else:
        out = export_hf(args.to_hf, args.out, overwrite=args.overwrite)
        architecture = json.loads((out / "config.json").read_text())["architectures"][0]
        print(f"exported {args.to_hf} -> {architecture} in {out}; load it with "
              f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


# ------------------------------------------------------------------------------------------------
# finetune


def cmd_finetune(args: FinetuneArgs) -> None:
    from gptkit.finetune import run_finetune

    summary = run_finetune(args)
    runs = summary.get("run") or summary.get("self_trained")
    if args.task == "classify":
        test = runs["test"]
        line = (f"test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro avg']['f1']:.4f}; "
                f"{runs['trainable_parameters']:,} of {runs['total_parameters']:,} parameters trained")
        if "baseline" in summary:
            line += f" (with {summary['pseudo_labelled']} pseudo-labels; " \
                    f"{summary['baseline']['test']['accuracy']:.4f} from the labelled subset alone)"
    else:
        line = ", ".join(f"{k} {v:.4f}" for k, v in runs["final"].items() if k != "val_tokens")
    print(f"done: {line}; best checkpoint {args.out / 'best'}, report {args.out / 'report.json'}")


# ------------------------------------------------------------------------------------------------
# classify


@dataclass
class ClassifyArgs:
    """Classify texts with a fine-tuned classifier, or zero/few-shot by prompting any checkpoint."""

    checkpoint: Path
    """A classification fine-tune (uses its head), or any language model (classifies by prompting)."""
    text: list[str] = field(default_factory=list)
    """Texts to classify (prints one JSON line each)."""
    data: str | None = None
    """A labelled CSV/TSV/JSONL file or bundled set (sentiment, fortunes8): classify its --split and print
    a classification report. The split is the one `gptkit finetune` makes with the same fractions and seed."""
    split: Literal["test", "val", "all"] = "test"
    text_column: str = "text"
    label_column: str = "label"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    limit: int | None = None
    """Classify at most this many rows of --data (a random subset, drawn with --seed)."""
    labels: list[str] = field(default_factory=list)
    """Prompting: the labels (default: those of --data)."""
    template: str = "{text}\nLabel: {label}"
    """Prompting: a format string with {text} and a final {label} (a typed \\n is a newline), or a
    .yaml/.json template file (keys template, instructions, example_separator, label_words)."""
    label_words: list[str] = field(default_factory=list)
    """Prompting: LABEL=WORD pairs, the word scored for each label (default: the label itself)."""
    instructions: str = ""
    """Prompting: text that opens every prompt."""
    shots: int = 0
    """Prompting: examples per prompt, drawn (balanced across labels) from the training split of --data."""
    calibrate: bool = False
    """Prompting: divide by the label prior measured on content-free inputs (Zhao et al. 2021)."""
    normalize: Literal["sum", "mean"] = "sum"
    """Prompting: score a label word by its summed or its per-token log-likelihood."""
    seed: int = 0
    """Prompting: which shots are drawn."""
    report: Path | None = None
    """Write the classification report (JSON) here."""


def _prompt_template(args: ClassifyArgs):
    from gptkit.prompting import PromptTemplate

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
    from gptkit.evaluation import classification_report, format_classification_report
    from gptkit.finetune import classification_splits
    from gptkit.prompting import choose_examples

    require(bool(args.text) != (args.data is not None), "pass texts with --text, or a labelled file with --data")
    llm = LLM.load(args.checkpoint)
    splits = None
    if args.data is not None:
        splits = classification_splits(args.data, text_column=args.text_column, label_column=args.label_column,
                                       val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                                       seed=args.split_seed)
    labels = list(args.labels) or (list(splits.train.labels) if splits else None)
    options = {}
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
    data = {"test": splits.test, "val": splits.val}.get(args.split)
    if data is None:  # all rows
        from gptkit.data.labelled import LabelledData

        parts = (splits.train, splits.val, splits.test)
        data = LabelledData([t for p in parts for t in p.texts], [r for p in parts for r in p.row_labels],
                            list(splits.train.labels))
    if args.limit is not None:  # a random subset, not the first rows (files are often sorted by label)
        import random

        chosen = random.Random(args.seed).sample(range(len(data)), min(args.limit, len(data)))
        data = data.subset(sorted(chosen))
    predictions = llm.classify(data.texts, **options)
    index = {label: i for i, label in enumerate(data.labels)}
    unknown = sorted({p.label for p in predictions} - set(index))
    require(not unknown, f"the model predicts label(s) {unknown} that --data does not have ({data.labels})")
    report = classification_report(data.label_ids, [index[p.label] for p in predictions], list(data.labels))
    print(format_classification_report(report))
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------
# chat and complete: a local checkpoint or a server


@dataclass
class TalkArgs:
    checkpoint: Path | None = None
    """A local checkpoint or run directory to load (or pass --url)."""
    url: str | None = None
    """An OpenAI-compatible server, e.g. http://127.0.0.1:8000 (`gptkit serve`)."""
    api_key: str | None = None
    """The server's API key (default: $GPTKIT_API_KEY)."""
    model: str | None = None
    """The server's model name (default: the first it lists)."""
    max_tokens: int = 256
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None


def _backend(args: TalkArgs, chat_template: str = "auto"):
    from gptkit.serve.client import LocalBackend, RemoteBackend

    require((args.checkpoint is None) != (args.url is None), "pass exactly one of --checkpoint DIR or --url URL")
    if args.url is not None:
        return RemoteBackend(args.url, api_key=args.api_key or os.environ.get("GPTKIT_API_KEY"), model=args.model)
    from gptkit.api import LLM

    return LocalBackend(LLM.load(args.checkpoint), chat_template)  # type: ignore[arg-type]


def _sampling(args: TalkArgs) -> dict[str, Any]:
    sampling = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    if args.top_k is not None:
        sampling["top_k"] = args.top_k
    return sampling


@dataclass
class ChatArgs(TalkArgs):
    """Chat in the terminal with a checkpoint or a server: history kept, replies streamed; /reset, /exit."""

    system: str | None = None
    """A system message that opens the conversation."""
    chat_template: Literal["auto", "tokens", "plain"] = "auto"
    """Local checkpoints: role tokens (gptkit tokenizers), plain "User: ...\nAssistant: ...", or auto."""


def cmd_chat(args: ChatArgs) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    backend = _backend(args, args.chat_template)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
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
        history.append({"role": "user", "content": line})
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


@dataclass
class CompleteArgs(TalkArgs):
    """Complete a prompt with a checkpoint or a server, streaming the text."""

    prompt: str | None = None
    """The text to continue (default: read from standard input)."""
    stop: list[str] = field(default_factory=list)


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


# ------------------------------------------------------------------------------------------------
# serve


@dataclass
class ServeArgs:
    """Serve a checkpoint over HTTP with an OpenAI-compatible API: completions, chat, tokenize, metrics."""

    checkpoint: Path
    """A checkpoint directory, or a run directory (then its best checkpoint)."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0: every interface)."""
    port: int = 8000
    """Port to listen on; 0 picks a free one. The URL is printed once the server listens."""
    api_key: str | None = None
    """Require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize and /tokenizer_info (default: $GPTKIT_API_KEY; neither: no key)."""
    max_batch: int = 16
    """Sequences decoded together at most (a request with n samples takes n rows); also the largest n."""
    max_queue: int = 256
    """Requests waiting for room in the batch at most; beyond it requests get 429 (retry later)."""
    model_name: str | None = None
    """The name clients pass as `model` (default: the name of the --checkpoint directory)."""
    request_timeout: float | None = 600.0
    """Seconds after which an unfinished request is stopped (504); None: never."""
    chat_template: Literal["auto", "tokens", "plain"] = "auto"
    """/v1/chat/completions template: role tokens (gptkit tokenizers), plain text (User: ... Assistant: ...), or auto (tokens when the tokenizer has them)."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted, in bytes; larger ones get 413."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda, cuda:1, mps."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of weights, activations and KV cache: bfloat16 halves memory and, on CPUs with AMX, decodes batches of 8+ ~1.5x faster (one sequence is slower)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """uvicorn's and gptkit's log level (info logs every request)."""


def cmd_serve(args: ServeArgs) -> None:
    import logging
    import socket

    try:
        import uvicorn

        from gptkit.serve.app import create_app
    except ImportError as e:
        raise GptkitError(f"gptkit serve needs {e.name}: pip install fastapi uvicorn (or reinstall gptkit)") from None
    from gptkit.checkpoint import load_model
    from gptkit.serve.engine import EngineConfig

    require(0 <= args.port <= 65535, f"--port must be in 0..65535, got {args.port}")
    require(args.max_body_bytes >= 1, f"--max-body-bytes must be positive, got {args.max_body_bytes}")
    config = EngineConfig(max_batch=args.max_batch, max_queue=args.max_queue, request_timeout=args.request_timeout)
    config.validate()
    # Two busy Python threads share this process: the engine (model steps) and the event loop (HTTP).
    # Every small torch op releases the GIL and must take it back; with the default 5 ms switch interval
    # the engine waits up to 5 ms each time the event loop holds it, so decode steps stretch.
    sys.setswitchinterval(0.0002)
    model, tokenizer = load_model(args.checkpoint, device=args.device, dtype=args.dtype)
    name = args.model_name or Path(args.checkpoint).resolve().name
    api_key = args.api_key if args.api_key is not None else os.environ.get("GPTKIT_API_KEY") or None
    app = create_app(model, tokenizer, model_name=name, engine_config=config, api_key=api_key,
                     max_body_bytes=args.max_body_bytes, chat_template=args.chat_template)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logging.getLogger("gptkit").addHandler(handler)
    logging.getLogger("gptkit").setLevel(args.log_level.upper())
    # Bind and listen here, so that --port 0 can print the port it got, and clients that connect
    # before the server has started wait in the backlog instead of being refused.
    ipv6 = ":" in args.host
    sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise GptkitError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    sock.listen(2048)
    port = sock.getsockname()[1]
    base = f"http://{f'[{args.host}]' if ipv6 else args.host}:{port}"
    print(f"gptkit serve: {name} at {base}/v1 (OpenAI API{', API key required' if api_key else ''}; "
          f"docs {base}/docs, metrics {base}/metrics)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])


# ------------------------------------------------------------------------------------------------
# plumbing


COMMANDS: dict[str, tuple[type, Callable[..., None]]] = {
    "prepare": (PrepareArgs, cmd_prepare),
    "pretrain": (PretrainArgs, cmd_pretrain),
    "generate": (GenerateArgs, cmd_generate),
    "eval": (EvalArgs, cmd_eval),
    "convert": (ConvertArgs, cmd_convert),
    "finetune": (FinetuneArgs, cmd_finetune),
    "classify": (ClassifyArgs, cmd_classify),
    "chat": (ChatArgs, cmd_chat),
    "complete": (CompleteArgs, cmd_complete),
    "serve": (ServeArgs, cmd_serve),
}


def load_recipe(path: Path) -> dict[str, Any]:
    require(path.is_file(), f"--config {path} does not exist")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GptkitError(f"--config {path} is not valid YAML: {e}") from None
    require(isinstance(recipe, dict), f"--config {path} must hold a mapping of flag names to values")
    return recipe


def apply_recipe(defaults: Any, recipe: dict[str, Any], where: str) -> Any:
    """A copy of dataclass `defaults` with the recipe's values (nested dataclasses recursively)."""
    fields = {f.name: f for f in dataclasses.fields(defaults)}
    changes = {}
    for key, value in recipe.items():
        name = key.replace("-", "_")
        require(name in fields, f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(fields))}")
        current = getattr(defaults, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = apply_recipe(current, value, f"{where}.{key}")
        elif isinstance(current, Path) or (current is None and name in ("out", "config")):
            value = Path(value)
        changes[name] = value
    return dataclasses.replace(defaults, **changes)


def pretrain_defaults(argv: list[str]) -> tuple[PretrainArgs, dict[str, Any]]:
    """Defaults for `pretrain` after --preset and --config, and the model fields the recipe sets."""
    import argparse

    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", default="tiny")
    early.add_argument("--config", type=Path, default=None)
    known, _ = early.parse_known_args(argv)
    recipe = load_recipe(known.config) if known.config else {}
    preset = known.preset if "--preset" in " ".join(argv) else recipe.get("preset", known.preset)
    require(preset in PRESETS, f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    recipe_model = dict(recipe.pop("model", None) or {})
    recipe.pop("preset", None)
    # Training keys may sit at the top level, as their flags do (--max-iters), or under `train:`.
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    flat_train = {k: recipe.pop(k) for k in list(recipe) if k.replace("-", "_") in train_keys}
    if flat_train:
        recipe["train"] = {**(recipe.get("train") or {}), **flat_train}
    model = ModelConfig.from_dict({**PRESETS[preset], "name": preset, **recipe_model})
    # Leave derived fields unresolved in the defaults, so that `--model.n-head 2` alone re-derives
    # n_kv_head (and --model.n-embd the MLP width) instead of clashing with the preset's values.
    for derived in ("n_kv_head", "intermediate_size"):
        if derived not in {**PRESETS[preset], **recipe_model}:
            setattr(model, derived, None)
    defaults = PretrainArgs(preset=preset, config=known.config, model=model,
                            out=Path(f"out/pretrain/{preset}"))
    defaults = apply_recipe(defaults, recipe, f"--config {known.config}") if recipe else defaults
    return defaults, recipe_model


def finetune_defaults(argv: list[str]) -> FinetuneArgs:
    """Defaults for `finetune` after --config: its training and method keys may sit at the top level
    (as their flags do) or under `train:` / `peft:`."""
    import argparse

    from gptkit.finetune import finetune_train_defaults
    from gptkit.peft import PeftConfig

    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config", type=Path, default=None)
    known, _ = early.parse_known_args(argv)
    defaults = FinetuneArgs(checkpoint=tyro.MISSING, data=tyro.MISSING)  # type: ignore[arg-type]
    if known.config is None:
        return defaults
    recipe = load_recipe(known.config)
    for nested, type_ in (("train", TrainConfig), ("peft", PeftConfig)):
        keys = {f.name for f in dataclasses.fields(type_)}
        flat = {k: recipe.pop(k) for k in list(recipe) if k.replace("-", "_") in keys}
        if flat:
            recipe[nested] = {**(recipe.get(nested) or {}), **flat}
    defaults = dataclasses.replace(defaults, train=finetune_train_defaults(), config=known.config)
    return apply_recipe(defaults, recipe, f"--config {known.config}")


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
        args = tyro.cli(PretrainArgs, args=rest, default=defaults, prog="gptkit pretrain")
        # Model fields the user changed on the command line, on top of the preset and recipe; derived
        # fields (intermediate_size, n_kv_head) are recomputed from them rather than kept stale.
        flags = {f.name: getattr(args.model, f.name) for f in dataclasses.fields(ModelConfig)
                 if getattr(args.model, f.name) != getattr(defaults.model, f.name)}
        command(args, {**recipe_model, **flags})
    elif name == "finetune":
        command(tyro.cli(FinetuneArgs, args=rest, default=finetune_defaults(rest), prog="gptkit finetune"))
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


if __name__ == "__main__":
    main()
