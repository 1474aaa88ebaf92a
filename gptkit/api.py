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
    llm.moderate(["some text"])                           # -> [ModerationResult(flagged=..., categories={...})]
    LLM.load("out/moderation").moderate(["..."])         # a learned moderator (gptkit moderate --train): rules + it
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

from gptkit.adapt.quantize import QuantizeConfig, is_quantized, load_quantized, quantize_model
from gptkit.chat_format import (Message, chat_stop_token_ids, media_parts, render_chat, resolve_chat_template,
                                validate_conversation)
from gptkit.checkpoint import checkpoint_kind, inference_dtype, load_model, recorded_data_dir, resolve_checkpoint
from gptkit.data.audio import decode_audio_bytes
from gptkit.data.images import decode_image_bytes
from gptkit.data.labelled import LabelledData
from gptkit.data.moderation_data import text_style
from gptkit.data.multimodal import MEDIA_SLOT, MediaShape, load_media, media_prompt
from gptkit.evaluation.classification import classification_report
from gptkit.evaluation.lm import evaluate_tokens, evaluation_tokens
from gptkit.finetune.moderation import ModerationSpec, is_moderator
from gptkit.finetune.multimodal import MultimodalModel, load_multimodal, media_shape
from gptkit.finetune.spec import (FineTuned, attach_adapter, is_finetuned, load_finetuned, load_language_model,
                                  predict_labels)
from gptkit.errors import GptkitError, require
from gptkit.inference.decode import Completion
from gptkit.inference.embedding import EmbeddingStyle, embed_rows
from gptkit.inference.generate import generate, stream
from gptkit.inference.sampling import SamplingParams
from gptkit.inference.speculative import Speculation
from gptkit.inference.scoring import encode_pair, loglikelihood
from gptkit.models.gpt import GPT
from gptkit.models.heads import pad_batch
from gptkit.prompting.classify import Prediction, PromptClassifier, PromptTemplate
from gptkit.safety.moderation import LearnedClassifier, ModerationResult, Moderator
from gptkit.tokenizer import Tokenizer

_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


class LLM:
    """A model and its tokenizer, ready for inference."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, classifier: FineTuned | None = None, *,
                 path: Path | None = None, multimodal: MultimodalModel | None = None,
                 embedding_style: EmbeddingStyle | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.classifier = classifier
        """The fine-tuned classification model (head included), for checkpoints of `--task classify`."""
        self.path = path
        """The checkpoint directory it was loaded from (None when built in memory)."""
        self.multimodal = multimodal
        """For a multimodal checkpoint: the model with its encoder and projector (`model` is its GPT, which
        generates from text alone)."""
        self.embedding_style = embedding_style or EmbeddingStyle()
        """How `embed` pools and writes text: an embedding fine-tune's own (`--task embed`), else mean over raw text."""

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", *, adapter: str | Path | None = None,
             base: str | Path | None = None, dtype: str = "float32", quantize: str | None = None) -> "LLM":
        """`gptkit.api.load`: a checkpoint or run directory of any kind, ready for inference."""
        return load(path, device, adapter=adapter, base=base, dtype=dtype, quantize=quantize)

    def require_language_model(self) -> None:
        require(self.classifier is None, "this is a classification checkpoint (it predicts labels, not text): "
                                         "use classify(texts), or load its base checkpoint to generate")

    # --- classification -----------------------------------------------------------------------
    def classify(self, texts: str | Sequence[str], *, labels: Sequence[str] | None = None,
                 template: Any = None, shots: Sequence[tuple[str, str]] = (), calibrate: bool = False,
                 normalize: str = "sum", images: Any = None, audio: Any = None, video: Any = None) -> list[Any]:
        """A `gptkit.prompting.Prediction` (label, probs, scores) per text.

        A late-fusion multimodal checkpoint takes one media item per text (images=, audio= or video=: files
        or arrays, as for `generate`) and classifies each pair with its head.
        A classification checkpoint uses its trained head (`labels` must then be None or its own).
        Any other model classifies by prompting: each label's log-likelihood after `template` (a
        `PromptTemplate`, a dict, or a format string with {text} and {label}), optionally after
        `shots` [(text, label)] and calibrated by the content-free prior (see `gptkit.prompting`).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        require(all(isinstance(t, str) for t in texts), "texts must be a string or a list of strings")
        modality, media = _given_media(images, audio, video)
        if media is not None or (self.multimodal is not None and self.multimodal.config.fusion == "late"):
            return self.classify_media(texts, media, modality)
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

    def classify_media(self, texts: list[str], media: Any, modality: str) -> list[Any]:
        """Late fusion: each (text, media item) pair through the checkpoint's head."""
        multimodal = self.multimodal
        require(multimodal is not None and multimodal.config.fusion == "late",
                "classifying with media needs a late-fusion checkpoint (gptkit finetune --task multimodal "
                "--fusion late)")
        assert multimodal is not None
        config = multimodal.config
        require(media is not None, f"this late-fusion checkpoint classifies a text with its "
                                   f"{_MEDIA_ARGUMENT[config.modality]}: pass {_MEDIA_ARGUMENT[config.modality]}=[...]")
        require(config.modality == modality, f"this checkpoint reads {_MEDIA_ARGUMENT[config.modality]}, not "
                                             f"{_MEDIA_ARGUMENT[modality]}")
        items = list(media) if isinstance(media, (list, tuple)) else [media]
        require(len(items) == len(texts), f"{len(items)} media items for {len(texts)} texts: give one per text")
        shape = media_shape(config)
        device = next(self.model.parameters()).device
        # The text as training saw it: the prompt with its placeholder dropped (late fusion reads media apart).
        rows = [media_prompt(self.tokenizer, shape.placeholder + t.replace(shape.placeholder, ""), 0,
                             placeholder=shape.placeholder)[-self.model.config.block_size:] for t in texts]
        ids, lengths = pad_batch(rows)
        arrays = torch.stack([torch.as_tensor(load_media(item, shape)) for item in items])
        with torch.inference_mode():
            probs = multimodal(ids.to(device), arrays.to(device), lengths.to(device)).float().softmax(-1).cpu()
        labels = config.labels
        return [Prediction(labels[int(p.argmax())], dict(zip(labels, map(float, p))),
                           dict(zip(labels, map(float, p.clamp_min(1e-30).log())))) for p in probs]

    def classification_report(self, data: LabelledData, **options: Any) -> dict[str, Any]:
        """`classify` every text of `data` (options as for `classify`), then the report against its labels
        (`gptkit.evaluation.classification.classification_report`: accuracy, per-label and macro scores)."""
        predictions = self.classify(data.texts, **options)
        index = {label: i for i, label in enumerate(data.labels)}
        unknown = sorted({p.label for p in predictions} - set(index))
        require(not unknown, f"the model predicts label(s) {unknown} that the data does not have ({data.labels})")
        return classification_report(data.label_ids, [index[p.label] for p in predictions], list(data.labels))

    # --- embeddings ---------------------------------------------------------------------------
    def embed(self, texts: str | Sequence[str], *, pooling: str | None = None, normalize: bool = True,
              dimensions: int | None = None) -> torch.Tensor:
        """(N, n_embd) embeddings of texts from the final hidden states, pooled over each text's tokens ("mean" or
        "last"; default: the checkpoint's, see `embedding_style`) and L2-normalised (so `a @ b.T` is cosine
        similarity); `dimensions` keeps the first D components. Text longer than the context is cut to its first
        block_size tokens (`embedding_rows` says which)."""
        rows = self.embedding_rows(texts)
        return embed_rows(self._embedding_gpt(), [r for r, _ in rows],
                          pooling=pooling or self.embedding_style.pooling,  # type: ignore[arg-type]
                          normalize=normalize, dimensions=dimensions)

    def embedding_rows(self, texts: str | Sequence[str]) -> list[tuple[list[int], bool]]:
        """Each text's token ids for `embed`, cut to the context, and whether it was cut."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        require(len(texts) > 0, "texts must be a string or a non-empty list of strings")
        require(all(isinstance(t, str) for t in texts), "texts must be a string or a list of strings")
        require(all(t for t in texts), "an empty text has no embedding: pass text with at least one character")
        block = self.model.config.block_size
        rows = [self.tokenizer.encode(self.embedding_style.restyle(t)) for t in texts]
        return [(r[:block], len(r) > block) for r in rows]

    def _embedding_gpt(self) -> GPT:
        return self.classifier.gpt if self.classifier is not None else self.model  # type: ignore[return-value]

    # --- moderation ---------------------------------------------------------------------------
    def moderate(self, texts: str | bytes | Sequence[str | bytes], *,
                 learned: bool | None = None) -> list[ModerationResult]:
        """A `gptkit.safety.moderation.ModerationResult` per text (flagged, categories, category_scores, the words
        that matched): the bundled word-list rules, and for a learned moderator (`gptkit moderate --train`) its
        classifier too. learned=True requires the classifier (the error says how to train one); False: rules only.
        Bytes are decoded as UTF-8 with invalid bytes replaced (U+FFFD); empty text is not flagged."""
        return moderator_of(self, learned=learned).moderate(texts)

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
                 seed: int | None = None, images: Any = None, audio: Any = None, video: Any = None,
                 **options: Any) -> list[str] | list[list[str]]:
        """Generated texts.

        A single string prompt gives a list of its `n` texts; a list of prompts gives one such list
        per prompt (a list of lists, even when n=1). `options` are the other `SamplingParams` fields
        (repetition_penalty, presence_penalty, frequency_penalty, logprobs, stop_token_ids, ignore_eos), and
        speculative_tokens: prompt-lookup drafts a step for greedy decoding (`gptkit.inference.speculative`), the
        same text in fewer steps where the output repeats its prompt.
        images, audio, video (a multimodal checkpoint, the modality it reads): for a string prompt, a list of
        files or arrays — images (C, H, W) in [0, 1], audio clips (samples,) at 16 kHz, video clips
        (frames, C, H, W) or frame directories, GIFs, .npy/.npz files — one per `<image>`, `<audio>` or
        `<video>` placeholder in the prompt (no placeholder: they go first); for a list of prompts, one such
        list per prompt.
        """
        completions = self.generate_completions(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                                                top_p=top_p, n=n, stop=stop, seed=seed, images=images, audio=audio,
                                                video=video, **options)
        if isinstance(prompt, str):
            return [c.text for c in completions]  # type: ignore[union-attr]
        return [[c.text for c in per_prompt] for per_prompt in completions]  # type: ignore[union-attr]

    def generate_completions(self, prompt: str | Sequence[str], *, max_tokens: int = 256, temperature: float = 1.0,
                             top_k: int | None = None, top_p: float = 1.0, n: int = 1,
                             stop: str | list[str] | None = None, seed: int | None = None, images: Any = None,
                             audio: Any = None, video: Any = None, speculative_tokens: int = 0,
                             **options: Any) -> list[Completion] | list[list[Completion]]:
        """Like `generate`, with full `Completion` objects (token ids, finish_reason, logprobs)."""
        self.require_language_model()
        speculation = _speculation(speculative_tokens)
        params = _sampling_params(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, n=n,
                                  stop=stop, seed=seed, **options)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        require(all(isinstance(p, str) for p in prompts),
                "prompt must be a string or a list of strings (for token ids, use gptkit.inference.generate.generate)")
        modality, media = _given_media(images, audio, video)
        ids, embeds = self.media_prompts(prompts, media if media is None or not isinstance(prompt, str) else [media],
                                          modality)
        completions = generate(self.model, self.tokenizer, ids, params, prompt_embeds=embeds, speculation=speculation)
        grouped: list[list[Completion]] = [[] for _ in prompts]
        for c in completions:
            grouped[c.prompt_index].append(c)
        return grouped[0] if isinstance(prompt, str) else grouped

    def stream(self, prompt: str, *, max_tokens: int = 256, temperature: float = 1.0, top_k: int | None = None,
               top_p: float = 1.0, stop: str | list[str] | None = None, seed: int | None = None,
               images: Any = None, audio: Any = None, video: Any = None, speculative_tokens: int = 0,
               **options: Any) -> Iterator[str]:
        """Text pieces of one completion as they are generated (a partial stop string is never shown)."""
        self.require_language_model()
        speculation = _speculation(speculative_tokens)
        params = _sampling_params(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  stop=stop, seed=seed, **options)
        modality, media = _given_media(images, audio, video)
        ids, embeds = self.media_prompts([prompt], None if media is None else [media], modality)
        return stream(self.model, self.tokenizer, ids[0], params, prompt_embeds=embeds[0] if embeds else None,
                      speculation=speculation)

    def media_prompts(self, prompts: list[str], media: Any,
                       modality: str) -> tuple[list[Any], list[torch.Tensor] | None]:
        """Prompts as the decode batch takes them: the texts, or with media, ids and their input embeddings
        (early fusion: each item's projected tokens in its placeholder's slots)."""
        if media is None:
            return prompts, None
        config = self._media_model(modality, "pass {}=[...]").config
        require(isinstance(media, (list, tuple)) and len(media) == len(prompts),
                f"{_MEDIA_ARGUMENT[modality]} must give one list of media items per prompt ({len(prompts)})")
        shape = media_shape(config)
        all_ids, all_embeds = [], []
        for text, given in zip(prompts, media):
            given = list(given) if isinstance(given, (list, tuple)) else [given]
            require(given, f"an empty list of {modality}: pass {_MEDIA_ARGUMENT[modality]}=None for a text prompt")
            if shape.placeholder not in text:
                text = shape.placeholder * len(given) + text
            ids = media_prompt(self.tokenizer, text, config.media_tokens, placeholder=shape.placeholder,
                               images=len(given))
            ids, embeds = self.fuse_media(ids, given, modality)
            all_ids.append(ids)
            all_embeds.append(embeds)
        return all_ids, all_embeds

    def fuse_media(self, ids: Sequence[int], media: Sequence[Any], modality: str, *,
                   names: Sequence[str] | None = None) -> tuple[list[int], torch.Tensor]:
        """Early fusion of one prompt, the one place media become input embeddings (`media_prompts` and chat).

        ids: token ids holding a run of `media_tokens` MEDIA_SLOTs per item of `media` (in order); the items: files,
        arrays, or a file's bytes (a content part's payload), each named by `names` in errors. Returns the ids as
        the decode batch takes them (slots as 0) and their input embeddings (L, n_embd), each item's projected
        tokens in its slots.
        """
        multimodal = self._media_model(modality, "pass {}=[...]")
        config, shape = multimodal.config, media_shape(multimodal.config)
        device = next(self.model.parameters()).device
        block_size = self.model.config.block_size
        labels = list(names) if names is not None else [None] * len(media)
        arrays = torch.stack([torch.as_tensor(_media_array(item, shape, name))
                              for item, name in zip(media, labels)]).to(device)
        require(len(ids) < block_size,
                f"the prompt is {len(ids)} tokens with its {len(media)} {modality} item(s) ({config.media_tokens} "
                f"tokens each) but the model's context length is {block_size}")
        idx = torch.tensor([list(ids)], device=device)
        mask = idx == MEDIA_SLOT
        with torch.inference_mode():
            tokens = multimodal.media_tokens(arrays).reshape(1, -1, self.model.config.n_embd)
            embeds = multimodal.inputs_embeds(idx.masked_fill(mask, 0), tokens, mask)[0]
        return [0 if t == MEDIA_SLOT else t for t in ids], embeds

    def _media_model(self, modality: str, fix: str) -> MultimodalModel:
        """The multimodal model, checked to read `modality` and to generate; `fix` ({} is the right argument)."""
        require(self.multimodal is not None, f"this checkpoint is text-only: it cannot take {_MEDIA_ARGUMENT[modality]} (train a "
                                             "multimodal one with `gptkit finetune --task multimodal`)")
        multimodal = self.multimodal
        assert multimodal is not None
        config = multimodal.config
        require(config.modality == modality, f"this checkpoint reads {_MEDIA_ARGUMENT[config.modality]}, not "
                                             f"{_MEDIA_ARGUMENT[modality]}: {fix.format(_MEDIA_ARGUMENT[config.modality])}")
        require(config.fusion == "early", f"generating with {modality} needs an early-fusion checkpoint; this one is "
                                          f"{config.fusion}-fusion, which "
                                          + ("scores answers (MultimodalTask) only" if config.fusion == "cross"
                                             else "classifies texts with their media (LLM.classify) only"))
        return multimodal

    # --- chat ---------------------------------------------------------------------------------
    def chat(self, messages: Sequence[Message], *, chat_template: str = "auto", max_tokens: int = 256,
             **sampling: Any) -> str:
        """The assistant's reply to a conversation [{"role": ..., "content": ...}], in the chat format of
        `gptkit.chat_format` (the one training and the server use): it ends at the end-of-turn token.

        A multimodal checkpoint reads media in user messages, given as content parts where they go:
        {"type": "image", "image": "seven.png" or a (C, H, W) array}, {"type": "audio", "audio": a file or
        16 kHz samples} (also "video"), or OpenAI's image_url (a data URL) and input_audio (base64) parts.
        """
        return "".join(self.chat_stream(messages, chat_template=chat_template, max_tokens=max_tokens, **sampling))

    def chat_stream(self, messages: Sequence[Message], *, chat_template: str = "auto",
                    max_tokens: int = 256, **sampling: Any) -> Iterator[str]:
        """`chat`, as text pieces while they are generated. chat_template: auto, tokens or plain."""
        self.require_language_model()
        template = resolve_chat_template(self.tokenizer, chat_template)  # type: ignore[arg-type]
        ids, embeds = self.chat_prompt(messages, chat_template=template)
        stop_ids = chat_stop_token_ids(self.tokenizer, template)
        # Without an EOS, a plain-text turn ends at the newline before the next "User:".
        sampling.setdefault("stop", [] if stop_ids else ["\n"])
        params = _sampling_params(max_tokens=max_tokens, stop_token_ids=stop_ids, **sampling)
        return stream(self.model, self.tokenizer, ids, params, prompt_embeds=embeds)

    def chat_prompt(self, messages: Sequence[Message], *, chat_template: str = "auto",
                    max_media_bytes: int | None = None) -> tuple[list[int], torch.Tensor | None]:
        """A conversation as the model reads it for the assistant's next turn: its ids (`render_chat`, ending with
        the assistant's marker) and, when user messages hold media parts, the input embeddings of those ids
        (`fuse_media`: each part's tokens in the slots rendered where the part was; the slots' ids are 0).

        max_media_bytes: the largest media payload accepted (`gptkit.chat_format.MediaTooLarge` beyond it).
        """
        template = resolve_chat_template(self.tokenizer, chat_template)  # type: ignore[arg-type]
        conversation = validate_conversation(list(messages), require_assistant=False, media=True,
                                             max_media_bytes=max_media_bytes)
        parts = media_parts(conversation)
        if not parts:
            return render_chat(conversation, self.tokenizer, add_generation_prompt=True, template=template).ids, None
        kinds = sorted({part["type"] for part in parts})
        require(len(kinds) == 1, f"the conversation holds {' and '.join(kinds)} parts: one kind of media at a time")
        modality = kinds[0]
        multimodal = self._media_model(modality, "send {} instead")
        slots = {modality: [MEDIA_SLOT] * multimodal.config.media_tokens}
        ids = render_chat(conversation, self.tokenizer, add_generation_prompt=True, template=template,
                          media_slots=slots).ids
        return self.fuse_media(ids, [part[modality] for part in parts], modality,
                               names=[part["where"] for part in parts])

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
         base: str | Path | None = None, dtype: str = "float32", quantize: str | None = None) -> LLM:
    """The one loader: a checkpoint directory, or a run directory (its best checkpoint, else its last).

    Dispatches on the checkpoint's kind (`gptkit.checkpoint.checkpoint_kind`): a plain checkpoint loads
    with `gptkit.checkpoint.load_model`, a fine-tune with `gptkit.finetune.spec` (an adapter one with
    the base it records, or `base`). `adapter`: put a saved adapter on the model at `path`: an adapter
    directory, or a fine-tuned checkpoint trained from `path` (then its head too, for a classifier).
    `dtype`: float32, bfloat16 or float16 for the weights, activations and KV cache (sampling and
    scores stay float32). bfloat16 halves the memory; on CPUs with AMX it decodes batches of 8 or
    more ~1.5x faster than float32, but a single sequence more slowly.
    `quantize`: "int8", "int8-weight-only" or "int4" quantization of the language model's weights after loading
    (`gptkit.adapt.quantize`; CPU; large int8 matrices round activations to int8 per row). A checkpoint written
    by `gptkit quantize` loads quantized without it.
    """
    torch_dtype = inference_dtype(dtype)
    if quantize is not None:
        QuantizeConfig(quantize).validate()
        require(dtype == "float32", f"quantize={quantize!r} keeps float32 activations: drop dtype={dtype!r}")
        require(torch.device(device).type == "cpu", f"quantized weights run on the CPU, not {device}")
    llm = _load(path, device, adapter=adapter, base=base, dtype=dtype, torch_dtype=torch_dtype)
    if quantize is not None:
        require(not is_quantized(llm.model), f"{llm.path} is already quantized; load it without quantize=")
        quantize_model(llm.model, QuantizeConfig(quantize))
    return llm


def _load(path: str | Path, device: str | torch.device, *, adapter: str | Path | None, base: str | Path | None,
          dtype: str, torch_dtype: torch.dtype) -> LLM:
    path = resolve_checkpoint(path)
    if adapter is not None:
        adapter_path = resolve_checkpoint(adapter) if (Path(adapter) / "best").exists() else Path(adapter)
        if is_finetuned(adapter_path):
            return _from_finetuned(*load_finetuned(adapter_path, base=path, device=device), torch_dtype, path)
        model, tokenizer = load_language_model(path, device=device)
        attach_adapter(model, adapter_path)
        return LLM(model.to(torch_dtype).eval(), tokenizer, path=path)
    kind = checkpoint_kind(path)
    if kind == "quantized":
        require(dtype == "float32", f"{path} is quantized (float32 activations): drop dtype={dtype!r}")
        model, tokenizer = load_quantized(path, device=device)
        return LLM(model, tokenizer, path=path)
    if kind == "finetune":
        return _from_finetuned(*load_finetuned(path, base=base, device=device), torch_dtype, path)
    if kind == "multimodal":
        multimodal, tokenizer = load_multimodal(path, device=device)
        multimodal.to(torch_dtype)
        return LLM(multimodal.gpt, tokenizer, path=path, multimodal=multimodal)
    model, tokenizer = load_model(path, device=device, dtype=dtype)
    return LLM(model, tokenizer, path=path)


def moderator_of(llm: LLM, *, learned: bool | None = None, threshold: float | None = None,
                 rules: bool = True) -> Moderator:
    """The moderator an LLM amounts to: the word-list rules, with its classifier when it is a learned moderator
    (a classification checkpoint holding moderation.json). learned: None (use it if there), True (require it),
    False (rules only); threshold: instead of the calibrated one."""
    path = llm.path
    has_learned = llm.classifier is not None and path is not None and is_moderator(path)
    require(has_learned or not learned, f"{path or 'this model'} is not a learned moderator (no moderation.json "
                                        "beside a classification head): train one with `gptkit moderate --train "
                                        "--checkpoint BASE --out out/moderation` and load out/moderation, or use the "
                                        "word-list rules alone (learned=False, or no --moderation-model)")
    if not has_learned or learned is False:
        return Moderator(rules=rules)
    assert path is not None and llm.classifier is not None
    spec = ModerationSpec.load(path)
    classifier, tokenizer = llm.classifier, llm.tokenizer
    labels = list(classifier.spec.labels or [])

    def predict(texts: list[str]) -> list[dict[str, float]]:
        with torch.inference_mode():
            probs = predict_labels(classifier, tokenizer, texts)
        return [dict(zip(labels, map(float, row))) for row in probs]

    return Moderator(rules=rules, learned=LearnedClassifier(
        predict, labels, threshold=spec.threshold if threshold is None else threshold, benign_label=spec.benign_label,
        chunk_chars=spec.chunk_chars, style=text_style(spec.text_style)))


def load_moderator(path: str | Path | None = None, *, threshold: float | None = None, rules: bool = True,
                   device: str | torch.device = "cpu") -> Moderator:
    """A `gptkit.safety.moderation.Moderator`: the bundled word-list rules, plus the learned moderator at `path`
    (`gptkit moderate --train`'s OUT, or its best/) when given (`rules=False`: the classifier alone)."""
    if path is None:
        require(rules, "a moderator without rules needs a learned moderator: pass its path")
        return Moderator()
    return moderator_of(load(path, device), learned=True, threshold=threshold, rules=rules)


def _from_finetuned(finetuned: FineTuned, tokenizer: Tokenizer, dtype: torch.dtype, path: Path) -> LLM:
    finetuned.to(dtype)
    spec = finetuned.spec
    style = EmbeddingStyle(spec.pooling, spec.text_style) if spec.task == "embed" else None  # type: ignore[arg-type]
    return LLM(finetuned.gpt, tokenizer, finetuned if finetuned.classifier is not None else None, path=path,
               embedding_style=style)


_MEDIA_ARGUMENT = {"image": "images", "audio": "audio", "video": "video"}


def _media_array(item: Any, shape: MediaShape, name: str | None) -> Any:
    """One media item as the model takes it: a file or an array (`load_media`), or a file's bytes (a content
    part's payload: an image or audio file); errors name the item (`name`, e.g. "messages[0].content[1]")."""
    if isinstance(item, (bytes, bytearray)):
        what = name or f"the {shape.modality} bytes"
        if shape.modality == "image":
            return decode_image_bytes(bytes(item), size=shape.image_size, channels=shape.channels, what=what)
        require(shape.modality == "audio", f"{what}: a video is given as a file path or an array, not as bytes")
        item = decode_audio_bytes(bytes(item), what=what)
    try:
        return load_media(item, shape)
    except GptkitError as e:
        if name is None or name in str(e):
            raise
        raise GptkitError(f"{name}: {e}") from None


def _given_media(images: Any, audio: Any, video: Any) -> tuple[str, Any]:
    """(modality, media) of generate's media arguments; at most one of them may be given."""
    given = [(modality, media) for modality, media in (("image", images), ("audio", audio), ("video", video))
             if media is not None]
    require(len(given) <= 1, "pass one kind of media at a time (images=, audio= or video=)")
    return given[0] if given else ("image", None)


def _speculation(tokens: int) -> Speculation | None:
    """Prompt-lookup speculation with up to `tokens` drafts a step (greedy requests only), or None for 0."""
    require(isinstance(tokens, int) and tokens >= 0, f"speculative_tokens must be an integer >= 0, got {tokens!r}")
    return Speculation(tokens=tokens) if tokens else None


def _sampling_params(*, stop: str | list[str] | None, **fields: Any) -> SamplingParams:
    unknown = sorted(set(fields) - _SAMPLING_FIELDS)
    require(not unknown, f"unknown sampling option(s) {unknown}; valid options are {sorted(_SAMPLING_FIELDS)}")
    return SamplingParams(stop=stop if stop is not None else [], **fields)
