"""The Python face and the one loader: `load` a checkpoint of any kind, then generate, stream, chat, score,
classify and evaluate; knows nothing of HTTP or the command line.

    from gptkit import LLM
    llm = LLM.load("out/pretrain")                        # a run dir (its best checkpoint) or a checkpoint dir
    llm.generate("Once upon a time", max_tokens=50)       # -> ["...one completion..."]
    llm.generate(["A", "B"], n=2, temperature=0.8)        # -> [["A1", "A2"], ["B1", "B2"]]
    for piece in llm.stream("Hello", stop="\\n"):
        print(piece, end="", flush=True)
    llm.loglikelihood("The capital of France is", " Paris")  # summed log-probability
    llm.chat([{"role": "user", "content": "Hi"}])          # the assistant's reply (gptkit.chat_format)
    llm.evaluate("val.txt")                               # loss, perplexity, bits per byte

    clf = LLM.load("out/finetune/sentiment")              # a classification fine-tune (head or adapter)
    clf.classify(["a charming, affecting journey"])       # -> [Prediction(label="1", probs={...})]
    llm.classify(["..."], labels=["-1", "1"], template=PromptTemplate(...))  # zero/few-shot, by prompting
    LLM.load("out/pretrain/tiny", adapter="out/finetune/lora")  # a base with a saved LoRA/adapter on it

Everything goes through `gptkit.inference`: the same sampler, decode batch and scoring path the CLI and
the server use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from gptkit.chat_format import chat_stop_token_ids, render_chat, resolve_chat_template
from gptkit.checkpoint import checkpoint_kind, inference_dtype, load_model, recorded_data_dir, resolve_checkpoint
from gptkit.data.images import load_pixels
from gptkit.data.labelled import LabelledData
from gptkit.data.multimodal import IMAGE_PLACEHOLDER, MEDIA_SLOT, media_prompt
from gptkit.evaluation.classification import classification_report
from gptkit.evaluation.lm import evaluate_tokens, evaluation_tokens
from gptkit.finetune.multimodal import MultimodalModel, load_multimodal
from gptkit.finetune.spec import (FineTuned, attach_adapter, is_finetuned, load_finetuned, load_language_model,
                                  predict_labels)
from gptkit.errors import require
from gptkit.inference.decode import Completion
from gptkit.inference.generate import generate, stream
from gptkit.inference.sampling import SamplingParams
from gptkit.inference.scoring import encode_pair, loglikelihood
from gptkit.models.gpt import GPT
from gptkit.prompting.classify import Prediction, PromptClassifier, PromptTemplate
from gptkit.tokenizer import Tokenizer

_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


class LLM:
    """A model and its tokenizer, ready for inference."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, classifier: FineTuned | None = None, *,
                 path: Path | None = None, multimodal: MultimodalModel | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.classifier = classifier
        """The fine-tuned classification model (head included), for checkpoints of `--task classify`."""
        self.path = path
        """The checkpoint directory it was loaded from (None when built in memory)."""
        self.multimodal = multimodal
        """For a multimodal checkpoint: the model with its encoder and projector (`model` is its GPT, which
        generates from text alone)."""

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", *, adapter: str | Path | None = None,
             base: str | Path | None = None, dtype: str = "float32") -> "LLM":
        """`gptkit.api.load`: a checkpoint or run directory of any kind, ready for inference."""
        return load(path, device, adapter=adapter, base=base, dtype=dtype)

    def require_language_model(self) -> None:
        require(self.classifier is None, "this is a classification checkpoint (it predicts labels, not text): "
                                         "use classify(texts), or load its base checkpoint to generate")

    # --- classification -----------------------------------------------------------------------
    def classify(self, texts: str | Sequence[str], *, labels: Sequence[str] | None = None,
                 template: Any = None, shots: Sequence[tuple[str, str]] = (), calibrate: bool = False,
                 normalize: str = "sum") -> list[Any]:
        """A `gptkit.prompting.Prediction` (label, probs, scores) per text.

        A classification checkpoint uses its trained head (`labels` must then be None or its own).
        Any other model classifies by prompting: each label's log-likelihood after `template` (a
        `PromptTemplate`, a dict, or a format string with {text} and {label}), optionally after
        `shots` [(text, label)] and calibrated by the content-free prior (see `gptkit.prompting`).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        require(all(isinstance(t, str) for t in texts), "texts must be a string or a list of strings")
        if self.classifier is not None:
            own = self.classifier.spec.labels or []
            require(labels is None or list(labels) == own,
                    f"this checkpoint's head predicts the labels {own}; drop labels= or pass exactly those")
            probs = predict_labels(self.classifier, self.tokenizer, texts)
            return [Prediction(own[int(p.argmax())], dict(zip(own, map(float, p))),
                               dict(zip(own, map(float, p.clamp_min(1e-30).log())))) for p in probs]
        require(labels is not None and len(labels) >= 2,
                "this model has no classification head: pass labels=[...] (two or more) to classify by prompting")
        if isinstance(template, str):
            template = PromptTemplate(template)
        elif isinstance(template, dict):
            template = PromptTemplate.from_dict(template)
        classifier = PromptClassifier(self, list(labels), template or PromptTemplate(), shots=list(shots),
                                      calibrate=calibrate, normalize=normalize)  # type: ignore[arg-type]
        return classifier.classify(texts)

    def classification_report(self, data: LabelledData, **options: Any) -> dict[str, Any]:
        """`classify` every text of `data` (options as for `classify`), then the report against its labels
        (`gptkit.evaluation.classification.classification_report`: accuracy, per-label and macro scores)."""
        predictions = self.classify(data.texts, **options)
        index = {label: i for i, label in enumerate(data.labels)}
        unknown = sorted({p.label for p in predictions} - set(index))
        require(not unknown, f"the model predicts label(s) {unknown} that the data does not have ({data.labels})")
        return classification_report(data.label_ids, [index[p.label] for p in predictions], list(data.labels))

    # --- language-model evaluation --------------------------------------------------------------
    def evaluate(self, data: str | Path | None = None, *, split: str = "val", batch_size: int = 16) -> dict[str, Any]:
        """Loss (nats/token), perplexity and bits per byte on `data`: a prepared dataset's `split` or a UTF-8
        text file; default: the dataset the checkpoint was trained on (its train_config.json)."""
        self.require_language_model()
        if data is None:
            require(self.path is not None, "this model was not loaded from a checkpoint: pass data=")
            data = recorded_data_dir(self.path)  # type: ignore[arg-type]
        tokens, n_bytes = evaluation_tokens(data, self.tokenizer, split)
        metrics = evaluate_tokens(self.model, tokens, n_bytes, block_size=self.model.config.block_size,
                                  batch_size=batch_size, device=next(self.model.parameters()).device)
        return {"checkpoint": str(self.path), "data": str(data), "loss": metrics["val_loss"],
                "perplexity": metrics["val_ppl"], "bits_per_byte": metrics["val_bpb"],
                "tokens": int(metrics["val_tokens"])}

    # --- generation ---------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[str], *, max_tokens: int = 256, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float = 1.0, n: int = 1, stop: str | list[str] | None = None,
                 seed: int | None = None, images: Any = None, **options: Any) -> list[str] | list[list[str]]:
        """Generated texts.

        A single string prompt gives a list of its `n` texts; a list of prompts gives one such list
        per prompt (a list of lists, even when n=1). `options` are the other `SamplingParams` fields
        (repetition_penalty, presence_penalty, frequency_penalty, logprobs, stop_token_ids, ignore_eos).
        images (a multimodal checkpoint): for a string prompt, a list of image files or (C, H, W) arrays
        in [0, 1], one per `<image>` placeholder in the prompt (no placeholder: the images go first);
        for a list of prompts, one such list per prompt.
        """
        completions = self.generate_completions(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                                top_p=top_p, n=n, stop=stop, seed=seed, images=images, **options)
        if isinstance(prompt, str):
            return [c.text for c in completions]  # type: ignore[union-attr]
        return [[c.text for c in per_prompt] for per_prompt in completions]  # type: ignore[union-attr]

    def generate_completions(self, prompt: str | Sequence[str], *, max_tokens: int = 256, temperature: float = 1.0,
                             top_k: int | None = None, top_p: float = 1.0, n: int = 1,
                             stop: str | list[str] | None = None, seed: int | None = None, images: Any = None,
                             **options: Any) -> list[Completion] | list[list[Completion]]:
        """Like `generate`, with full `Completion` objects (token ids, finish_reason, logprobs)."""
        self.require_language_model()
        params = _sampling_params(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, n=n,
                                  stop=stop, seed=seed, **options)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        require(all(isinstance(p, str) for p in prompts),
                "prompt must be a string or a list of strings (for token ids, use gptkit.inference.generate.generate)")
        ids, embeds = self._media_prompts(prompts, images if images is None or not isinstance(prompt, str)
                                          else [images])
        completions = generate(self.model, self.tokenizer, ids, params, prompt_embeds=embeds)
        grouped: list[list[Completion]] = [[] for _ in prompts]
        for c in completions:
            grouped[c.prompt_index].append(c)
        return grouped[0] if isinstance(prompt, str) else grouped

    def stream(self, prompt: str, *, max_tokens: int = 256, temperature: float = 1.0, top_k: int | None = None,
               top_p: float = 1.0, stop: str | list[str] | None = None, seed: int | None = None,
               images: Any = None, **options: Any) -> Iterator[str]:
        """Text pieces of one completion as they are generated (a partial stop string is never shown)."""
        self.require_language_model()
        params = _sampling_params(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  stop=stop, seed=seed, **options)
        ids, embeds = self._media_prompts([prompt], None if images is None else [images])
        return stream(self.model, self.tokenizer, ids[0], params, prompt_embeds=embeds[0] if embeds else None)

    def _media_prompts(self, prompts: list[str], images: Any) -> tuple[list[Any], list[torch.Tensor] | None]:
        """Prompts as the decode batch takes them: the texts, or with images, ids and their input embeddings
        (early fusion: each image's projected tokens in its placeholder's slots)."""
        if images is None:
            return prompts, None
        require(self.multimodal is not None, "this checkpoint is text-only: it cannot take images (train a "
                                             "multimodal one with `gptkit finetune --task multimodal`)")
        multimodal = self.multimodal
        assert multimodal is not None
        require(multimodal.config.fusion == "early", "generating with images needs an early-fusion checkpoint; "
                                                     "cross-attention fusion scores answers (MultimodalTask) only")
        require(isinstance(images, (list, tuple)) and len(images) == len(prompts),
                f"images must give one list of images per prompt ({len(prompts)})")
        vision = multimodal.config.vision
        device = next(self.model.parameters()).device
        all_ids, all_embeds = [], []
        for text, given in zip(prompts, images):
            given = list(given) if isinstance(given, (list, tuple)) else [given]
            require(given, "an empty list of images: pass images=None for a text prompt")
            pixels = torch.stack([torch.as_tensor(load_pixels(image, vision.image_size, vision.channels))
                                  for image in given]).to(device)
            if IMAGE_PLACEHOLDER not in text:
                text = IMAGE_PLACEHOLDER * len(given) + text
            ids = media_prompt(self.tokenizer, text, multimodal.config.media_tokens, images=len(given))
            require(len(ids) < self.model.config.block_size,
                    f"the prompt is {len(ids)} tokens with its {len(given)} image(s) ({multimodal.config.media_tokens} "
                    f"tokens each) but the model's context length is {self.model.config.block_size}")
            idx = torch.tensor([ids], device=device)
            mask = idx == MEDIA_SLOT
            with torch.inference_mode():
                media = multimodal.media_tokens(pixels).reshape(1, -1, self.model.config.n_embd)
                embeds = multimodal.inputs_embeds(idx.masked_fill(mask, 0), media, mask)[0]
            all_ids.append([0 if t == MEDIA_SLOT else t for t in ids])
            all_embeds.append(embeds)
        return all_ids, all_embeds

    # --- chat ---------------------------------------------------------------------------------
    def chat(self, messages: Sequence[dict[str, str]], *, chat_template: str = "auto", max_tokens: int = 256,
             **sampling: Any) -> str:
        """The assistant's reply to a conversation [{"role": ..., "content": ...}], in the chat format of
        `gptkit.chat_format` (the one training and the server use): it ends at the end-of-turn token."""
        return "".join(self.chat_stream(messages, chat_template=chat_template, max_tokens=max_tokens, **sampling))

    def chat_stream(self, messages: Sequence[dict[str, str]], *, chat_template: str = "auto",
                    max_tokens: int = 256, **sampling: Any) -> Iterator[str]:
        """`chat`, as text pieces while they are generated. chat_template: auto, tokens or plain."""
        self.require_language_model()
        template = resolve_chat_template(self.tokenizer, chat_template)  # type: ignore[arg-type]
        ids = render_chat(messages, self.tokenizer, add_generation_prompt=True, template=template).ids
        stop_ids = chat_stop_token_ids(self.tokenizer, template)
        # Without an EOS, a plain-text turn ends at the newline before the next "User:".
        sampling.setdefault("stop", [] if stop_ids else ["\n"])
        params = _sampling_params(max_tokens=max_tokens, stop_token_ids=stop_ids, **sampling)
        return stream(self.model, self.tokenizer, ids, params)

    # --- scoring ------------------------------------------------------------------------------
    def loglikelihood(self, context: str, continuation: str) -> float:
        """Summed log-probability of `continuation` following `context`, from one forward pass."""
        return self.loglikelihood_batch([(context, continuation)])[0][0]

    def score(self, text: str) -> float:
        """Summed log-probability of the whole text, starting from the BOS token."""
        return self.loglikelihood("", text)

    def loglikelihood_batch(self, requests: Sequence[tuple[str, str]], *,
                            batch_size: int = 16) -> list[tuple[float, bool]]:
        """(summed log-probability, is_greedy) of each (context, continuation), lm-evaluation-harness style.

        Tokenised as the harness does (`gptkit.inference.scoring.encode_pair`): trailing spaces of the
        context move to the continuation, and a merge across the boundary is scored as the model would
        see it. `is_greedy` says whether every continuation token was the model's argmax. An empty
        context conditions on BOS; when a pair exceeds the context window, the oldest context tokens
        are dropped.
        """
        pairs = [encode_pair(self.tokenizer, context, continuation) for context, continuation in requests]
        return self.loglikelihood_ids_batch(pairs, batch_size=batch_size)

    def loglikelihood_ids(self, context: Sequence[int], continuation: Sequence[int]) -> float:
        """`loglikelihood` on token ids."""
        return self.loglikelihood_ids_batch([(context, continuation)])[0][0]

    def loglikelihood_ids_batch(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                                batch_size: int = 16) -> list[tuple[float, bool]]:
        """`loglikelihood_batch` on token ids: one forward pass per `batch_size` pairs."""
        self.require_language_model()
        return loglikelihood(self.model, self.tokenizer, pairs, batch_size=batch_size)


def load(path: str | Path, device: str | torch.device = "cpu", *, adapter: str | Path | None = None,
         base: str | Path | None = None, dtype: str = "float32") -> LLM:
    """The one loader: a checkpoint directory, or a run directory (its best checkpoint, else its last).

    Dispatches on the checkpoint's kind (`gptkit.checkpoint.checkpoint_kind`): a plain checkpoint loads
    with `gptkit.checkpoint.load_model`, a fine-tune with `gptkit.finetune.spec` (an adapter one with
    the base it records, or `base`). `adapter`: put a saved adapter on the model at `path`: an adapter
    directory, or a fine-tuned checkpoint trained from `path` (then its head too, for a classifier).
    `dtype`: float32, bfloat16 or float16 for the weights, activations and KV cache (sampling and
    scores stay float32). bfloat16 halves the memory; on CPUs with AMX it decodes batches of 8 or
    more ~1.5x faster than float32, but a single sequence more slowly.
    """
    torch_dtype = inference_dtype(dtype)
    path = resolve_checkpoint(path)
    if adapter is not None:
        adapter_path = resolve_checkpoint(adapter) if (Path(adapter) / "best").exists() else Path(adapter)
        if is_finetuned(adapter_path):
            return _from_finetuned(*load_finetuned(adapter_path, base=path, device=device), torch_dtype, path)
        model, tokenizer = load_language_model(path, device=device)
        attach_adapter(model, adapter_path)
        return LLM(model.to(torch_dtype).eval(), tokenizer, path=path)
    kind = checkpoint_kind(path)
    if kind == "finetune":
        return _from_finetuned(*load_finetuned(path, base=base, device=device), torch_dtype, path)
    if kind == "multimodal":
        multimodal, tokenizer = load_multimodal(path, device=device)
        multimodal.to(torch_dtype)
        return LLM(multimodal.gpt, tokenizer, path=path, multimodal=multimodal)
    model, tokenizer = load_model(path, device=device, dtype=dtype)
    return LLM(model, tokenizer, path=path)


def _from_finetuned(finetuned: FineTuned, tokenizer: Tokenizer, dtype: torch.dtype, path: Path) -> LLM:
    finetuned.to(dtype)
    return LLM(finetuned.gpt, tokenizer, finetuned if finetuned.classifier is not None else None, path=path)


def _sampling_params(*, stop: str | list[str] | None, **fields: Any) -> SamplingParams:
    unknown = sorted(set(fields) - _SAMPLING_FIELDS)
    require(not unknown, f"unknown sampling option(s) {unknown}; valid options are {sorted(_SAMPLING_FIELDS)}")
    return SamplingParams(stop=stop if stop is not None else [], **fields)
