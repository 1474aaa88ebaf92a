"""The flags of every `gptkit` command, as dataclasses that tyro turns into `--kebab-case` flags.

Field docstrings are the `--help` texts, and the field names are the keys of a YAML recipe. Where a
command runs a library job (pretrain, finetune), its flags are the job's own dataclass, with tyro's
markers added here (tyro stays in `gptkit.cli`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from gptkit.adapt.peft import PeftConfig
from gptkit.config import PRESETS, ModelConfig
from gptkit.data.parallel import cpu_cores
from gptkit.finetune.job import FinetuneArgs, finetune_train_defaults
from gptkit.training.loop import TrainConfig
from gptkit.training.pretrain import PretrainArgs, pretrain_train_defaults
from gptkit.training.tasks.adversarial import AdversarialConfig


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
    workers: int = field(default_factory=cpu_cores)
    """Processes that tokenise in parallel (default: one per CPU core); inputs under 8 MB use this many threads in one process instead. The output is the same for any number."""
    resume: bool = False
    """Continue an interrupted or killed prepare of the same inputs into OUT from where it stopped, instead of starting over."""
    filter_moderation: float | None = None
    """Leave out documents whose moderation score is at least this (a word-list match scores 1.0; with --moderation-model, the classifier's score counts too); they are counted and listed in OUT/filtered.jsonl."""
    moderation_model: Path | None = None
    """With --filter-moderation: a learned moderator (`gptkit moderate --train`); default: the word-list rules alone."""


@dataclass
class PretrainFlags(PretrainArgs):
    """Pretrain a GPT from scratch (default: the tiny model on the bundled Shakespeare corpus, on CPU, in minutes)."""

    preset: Annotated[str, tyro.conf.arg(help=f"Model preset: {', '.join(PRESETS)}.")] = "tiny"
    # The default recipe, tuned with benchmarks/time_to_loss.py: on the bundled corpus a 2,048-token BPE
    # beats characters at equal compute, and small batches at a high learning rate learn fastest.
    train: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=pretrain_train_defaults)
    adv: Annotated[AdversarialConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=AdversarialConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig.from_preset("tiny"))


@dataclass
class GenerateArgs:
    """Sample text from a checkpoint."""

    checkpoint: Path
    """A checkpoint directory, or a run directory (then its best checkpoint)."""
    prompt: str = ""
    """Text to continue (empty: start from the beginning-of-text token)."""
    image: list[Path] = field(default_factory=list)
    """Image files for a multimodal checkpoint, one per <image> placeholder in --prompt (none: they go first)."""
    audio: list[Path] = field(default_factory=list)
    """Audio files (WAV, FLAC, OGG, MP3; resampled to 16 kHz mono) for an audio checkpoint, one per <audio>."""
    video: list[Path] = field(default_factory=list)
    """Video clips (a directory of frames, a .npy/.npz array or an animated GIF) for a video checkpoint, one per <video>."""
    conditions: str | None = None
    """Conditions rendered before the prompt (role, tone, style, audience, language, length, format, and
    if/then rules; see gptkit.prompting.conditions): a .yaml/.json file or inline YAML/JSON, e.g.
    '{tone: formal, rules: [{if: the customer is angry, then: apologise first}]}'."""
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
    speculative_tokens: int = 0
    """With --temperature 0: prompt-lookup speculative decoding, up to this many draft tokens a step copied from
    the prompt and output, checked by the model in one pass (the same text, fewer steps). 0: off."""
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of weights, activations and KV cache: bfloat16 halves memory and, on CPUs with AMX, decodes batches of 8+ ~1.5x faster (one sequence is slower)."""
    quantize: Literal["int8", "int8-weight-only", "int4"] | None = None
    """Quantization after loading (CPU): int8 (per-channel scales, a quarter of the weight bytes; large matrices
    also round activations to int8 per row, as llama.cpp's Q8_0), int8-weight-only (float activations: for models
    with outlier activation channels) or int4 (groups of 32, an eighth); a `gptkit quantize` checkpoint is
    quantized already."""


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
    quantize: Literal["int8", "int8-weight-only", "int4"] | None = None
    """Quantization after loading (CPU): int8 (per-channel scales, a quarter of the weight bytes; large matrices
    also round activations to int8 per row, as llama.cpp's Q8_0), int8-weight-only (float activations: for models
    with outlier activation channels) or int4 (groups of 32, an eighth); a `gptkit quantize` checkpoint is
    quantized already."""


@dataclass
class ConvertArgs:
    """Convert a local Hugging Face model directory to a gptkit checkpoint (--from-hf) or back (--to-hf), or a
    checkpoint to a GGUF file for llama.cpp (--to-gguf) or back (--from-gguf)."""

    out: Path
    """Directory to write: a gptkit checkpoint (with --from-hf) or a Hugging Face model directory (with --to-hf)."""
    from_hf: Path | None = None
    """A local Hugging Face directory (config.json, *.safetensors or pytorch_model.bin, tokenizer.json) of GPT-2,
    Llama (SmolLM2, TinyLlama) or Qwen2. gptkit never downloads: fetch Hub models first (`hf download`)."""
    to_hf: Path | None = None
    """A gptkit checkpoint or run directory, written for transformers' AutoModelForCausalLM and AutoTokenizer."""
    to_gguf: Path | None = None
    """A gptkit checkpoint or run directory (GPT-2 or Llama family, byte-level BPE tokenizer), written as one GGUF
    file (OUT) for llama.cpp, tokenizer included."""
    from_gguf: Path | None = None
    """A GGUF file (llama.cpp's gpt2 or llama architecture, byte-level BPE tokenizer), read into a gptkit checkpoint
    (OUT) with float32 weights."""
    outtype: Literal["f32", "f16", "q8_0"] = "f32"
    """--to-gguf: the weights' format (q8_0: llama.cpp's 8-bit blocks of 32)."""
    overwrite: bool = False
    """Replace OUT if it already exists."""


@dataclass
class FinetuneFlags(FinetuneArgs):
    """Fine-tune a checkpoint (classification head, chat/instruction tuning, more LM, images/audio, sentence embeddings)
    with full, LoRA, adapters, AdaLoRA or freeze."""

    peft: Annotated[PeftConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=PeftConfig)
    train: Annotated[TrainConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=finetune_train_defaults)
    adv: Annotated[AdversarialConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=AdversarialConfig)


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


@dataclass
class AugmentArgs:
    """Augment labelled data: counterfactual edits that flip the label (negation, antonyms) or keep it (names, gender, places)."""

    data: str
    """A labelled CSV/TSV/JSONL file, or a bundled set (sentiment)."""
    out: Path
    """The JSONL file to write: {"text", "label", "source_index", "rule", "kind", "edit"} per line."""
    counterfactual: bool = False
    """Make counterfactual edits (gptkit.data.augment.counterfactual); the one augmentation so far."""
    kinds: str = "flip,keep"
    """Which edits: flip (negation inserted/removed, antonyms swapped: the label flips), keep (names, gender,
    places swapped: the label stays), or both, comma-separated."""
    rules: str = ""
    """Only these rules, comma-separated (negation.insert, negation.remove, antonym, gender, name, place)."""
    text_column: str = "text"
    label_column: str = "label"
    edits_only: bool = False
    """Write the edits only, not the original rows before them."""
    flip_labels: list[str] = field(default_factory=list)
    """For label sets that are not binary: how flip edits change each label, as LABEL=FLIPPED pairs (e.g.
    1=5 5=1 2=4 4=2); rows with other labels get no flip edits."""


@dataclass
class ModerateArgs:
    """Moderate texts (a curated word list, plus a learned classifier), or train the learned moderator (--train)."""

    text: list[str] = field(default_factory=list)
    """Texts to moderate (prints one JSON line each)."""
    data: Path | None = None
    """A .jsonl file (its --text-field) or a text file (one text a line) to moderate: one JSON line per text. Lines that are not UTF-8 are moderated with their invalid bytes replaced (U+FFFD), with a warning."""
    text_field: str = "text"
    checkpoint: Path | None = None
    """A learned moderator (the --out of `gptkit moderate --train`); omitted: the word-list rules alone. With --train: the base checkpoint to fine-tune (e.g. out/pretrain/base-mix)."""
    threshold: float | None = None
    """Flag text when the classifier's score (1 - P(none)) reaches this (default: the one calibrated in training)."""
    train: bool = False
    """Train the learned moderator: fine-tune --checkpoint on the bundled moderation data (held out by category), calibrate its threshold, write it to --out."""
    out: Path = Path("out/moderation")
    """--train: the run directory (its best/ is the moderator)."""
    method: Literal["full", "lora", "adapter", "adalora", "freeze"] = "full"
    """--train: the fine-tuning method."""
    max_iters: int = 300
    """--train: training steps (batch 16)."""
    text_style: Literal["english_mix_blind", "english_mix", "raw"] = "english_mix_blind"
    """--train: how the classifier reads text: english_mix (lower case, punctuation spaced, like the base-mix corpus), english_mix_blind (the same, with words naming religions, ethnicities and orientations hidden, so that they cannot read as offence) or raw."""
    max_fpr: float = 0.02
    """--train: the calibrated threshold flags at most this share of the benign validation rows."""
    overwrite: bool = False
    """--train: replace an earlier run in --out."""


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
    quantize: Literal["int8", "int8-weight-only", "int4"] | None = None
    """Quantization after loading (CPU): int8 (per-channel scales, a quarter of the weight bytes; large matrices
    also round activations to int8 per row, as llama.cpp's Q8_0), int8-weight-only (float activations: for models
    with outlier activation channels) or int4 (groups of 32, an eighth); a `gptkit quantize` checkpoint is
    quantized already."""


@dataclass
class ChatArgs(TalkArgs):
    """Chat in the terminal with a checkpoint or a server: history kept, replies streamed; /reset, /exit."""

    system: Annotated[str | None, tyro.conf.arg(aliases=("--system-prompt",))] = None
    """A system message that opens the conversation (a system prompt / ethics preamble): the text, or a file holding it."""
    chat_template: Literal["auto", "tokens", "plain"] = "auto"
    """Local checkpoints: role tokens (gptkit tokenizers), plain "User: ...\nAssistant: ...", or auto."""
    image: list[Path] = field(default_factory=list)
    """Image files for a multimodal checkpoint (or server), attached before the text of the first message (again after /reset)."""
    audio: list[Path] = field(default_factory=list)
    """Audio files (WAV, FLAC, OGG, MP3) for an audio checkpoint (or server), attached like --image."""


@dataclass
class CompleteArgs(TalkArgs):
    """Complete a prompt with a checkpoint or a server, streaming the text."""

    prompt: str | None = None
    """The text to continue (default: read from standard input)."""
    stop: list[str] = field(default_factory=list)


@dataclass
class QuantizeArgs:
    """Write a quantized copy of a checkpoint (int8 or int4 weights) that every inference command loads as is."""

    checkpoint: Path
    """The float checkpoint (or run directory) to quantize; fine-tunes with an adapter are merged first."""
    out: Path
    """The quantized checkpoint directory to write."""
    mode: Literal["int8", "int8-weight-only", "int4"] = "int8"
    """int8: per-output-channel scales, and large matrices round activations to int8 per row (fast);
    int8-weight-only: the same weights with float activations (check `gptkit eval` of both on models with outlier
    activation channels); int4: groups of --group-size input channels with scales and zero points (the embedding
    and a head tied to it stay int8)."""
    group_size: int = 32
    """int4: input channels per group (32, 64, 128 or 256)."""
    overwrite: bool = False


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
    prefix_cache_tokens: int = 4096
    """Prompt tokens whose keys and values are kept, so a prompt sharing a prefix with a recent one (a system
    prompt, few-shot examples) prefills only the rest; 0 turns prefix caching off."""
    speculative_tokens: int = 0
    """Prompt-lookup speculative decoding: up to this many draft tokens a step, copied from each request's own
    text and checked by the model in one pass, while every running request is greedy; the text is unchanged. 0: off."""
    model_name: str | None = None
    """The name clients pass as `model` (default: the name of the --checkpoint directory)."""
    request_timeout: float | None = 600.0
    """Seconds after which an unfinished request is stopped (504); None: never."""
    chat_template: Literal["auto", "tokens", "plain"] = "auto"
    """/v1/chat/completions template: role tokens (gptkit tokenizers), plain text (User: ... Assistant: ...), or auto (tokens when the tokenizer has them)."""
    max_body_bytes: int | None = None
    """Largest request body accepted, in bytes; larger ones get 413 (default: 1 MiB, plus room for one --max-media-bytes part in base64 when the checkpoint is multimodal)."""
    max_media_bytes: int = 8 << 20
    """Multimodal checkpoints: the largest image or audio file of one chat content part (decoded), in bytes; larger ones get 413."""
    device: str = "cpu"
    """Where the model runs: cpu, cuda, cuda:1, mps."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Precision of weights, activations and KV cache: bfloat16 halves memory and, on CPUs with AMX, decodes batches of 8+ ~1.5x faster (one sequence is slower)."""
    quantize: Literal["int8", "int8-weight-only", "int4"] | None = None
    """Quantization after loading (CPU): int8 (per-channel scales, a quarter of the weight bytes; large matrices
    also round activations to int8 per row, as llama.cpp's Q8_0), int8-weight-only (float activations: for models
    with outlier activation channels) or int4 (groups of 32, an eighth); a `gptkit quantize` checkpoint is
    quantized already."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """uvicorn's and gptkit's log level (info logs every request)."""
    moderation: Literal["none", "input", "output", "both"] = "none"
    """Moderate prompts (a flagged one gets a 400 with code content_filter, or --refusal-message), output (it stops where a flagged span starts, finish_reason content_filter), both, or none. POST /v1/moderations works either way."""
    moderation_model: Path | None = None
    """A learned moderator (`gptkit moderate --train`) to moderate with, besides the word-list rules (default: the rules alone)."""
    refusal_message: str | None = None
    """With --moderation input/both: reply with this text (finish_reason content_filter) instead of the 400."""
    system_prompt: str | None = None
    """A system prompt (e.g. an ethics preamble) that opens every chat without a system message: the text, or a file holding it."""
