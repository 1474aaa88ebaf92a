"""Images into the GPT: encoders, projector, early fusion, gated cross-attention, the task, checkpoints, image files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gptkit.adapt.cross_attention import add_cross_attention, remove_cross_attention
from gptkit.api import LLM
from gptkit.checkpoint import checkpoint_kind
from gptkit.config import ModelConfig
from gptkit.data.images import bundled_mnist, decode_image_bytes, read_image, stratified_indices
from gptkit.data.multimodal import MEDIA_SLOT, MediaExamples, media_prompt
from gptkit.errors import GptkitError
from gptkit.finetune.multimodal import build_multimodal, load_multimodal
from gptkit.models.gpt import GPT
from gptkit.models.multimodal import MediaContext, MultimodalConfig
from gptkit.models.projector import Projector, ProjectorConfig
from gptkit.models.vision import VisionConfig, VisionEncoder
from gptkit.tokenizer import Tokenizer
from gptkit.training.loop import TrainConfig, train
from gptkit.training.tasks.multimodal import MultimodalTask, answer_scores


def small_gpt(vocab: int = 64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=32))


@pytest.fixture(scope="module")
def digits_tokenizer() -> Tokenizer:
    return Tokenizer.train_char(["digit: 0123456789 "])


@pytest.mark.parametrize("kind, tokens", [("vit", 16), ("cnn", 49)])
def test_encoders_give_one_token_per_grid_cell(kind, tokens):
    config = VisionConfig(kind=kind, image_size=28, channels=1, patch_size=7, n_embd=32, n_layer=1, n_head=4)
    encoder = VisionEncoder(config)
    out = encoder(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, tokens, 32) == (3, config.num_tokens, encoder.out_dim)
    assert not torch.allclose(out[0], out[1])  # different images, different features
    with pytest.raises(GptkitError, match=r"images must be \(batch, 1, 28, 28\), got \(3, 3, 28, 28\)"):
        encoder(torch.rand(3, 3, 28, 28))
    with pytest.raises(GptkitError, match="multiple of patch_size"):
        VisionConfig(kind="vit", image_size=30, patch_size=7).validate()


def test_projector_reduces_tokens_by_pooling_or_pixel_shuffle():
    features = torch.randn(2, 16, 8)  # a 4x4 grid
    for reduction, width in (("pool", 8), ("shuffle", 32)):
        projector = Projector(8, 24, ProjectorConfig(reduction=reduction, factor=2))
        assert projector.reduce(features).shape == (2, 4, width)
        assert projector(features).shape == (2, 4, 24)
    # pooling averages each 2x2 block: the first output cell is the mean of cells 0, 1, 4, 5
    pooled = Projector(8, 8, ProjectorConfig("pool", 2)).reduce(features)
    assert torch.allclose(pooled[:, 0], features[:, [0, 1, 4, 5]].mean(1), atol=1e-6)
    with pytest.raises(GptkitError, match="square grid"):
        Projector(8, 8, ProjectorConfig("pool", 2)).reduce(torch.randn(1, 12, 8))


def test_cross_attention_with_closed_gates_is_exactly_the_text_only_gpt():
    gpt = small_gpt()
    idx = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        text_only = gpt(idx)
        context = MediaContext(media=torch.randn(2, 5, 32))
        add_cross_attention(gpt, context, every=1)
        assert torch.equal(gpt(idx), text_only)  # gates at 0: tanh(0) = 0, bit for bit
        for block in gpt.blocks:
            block.xattn.gate_attn.fill_(0.5)
        opened = gpt(idx)
        assert not torch.allclose(opened, text_only)
        context.media = torch.randn(2, 5, 32)
        assert not torch.allclose(gpt(idx), opened)  # the media now matter
        context.media = None
        assert torch.equal(gpt(idx), text_only)  # no media: the layers step aside
        remove_cross_attention(gpt)
        assert torch.equal(gpt(idx), text_only)


def test_early_fusion_puts_the_image_in_its_slots_and_checks_their_count(digits_tokenizer):
    config = MultimodalConfig(fusion="early", vision=VisionConfig(kind="cnn", n_embd=32, n_layer=0),
                              projector=ProjectorConfig("pool", 7))  # 7x7 grid -> 1 token
    model = build_multimodal(small_gpt(digits_tokenizer.vocab_size), config).eval()
    assert config.media_tokens == 1
    prompt = media_prompt(digits_tokenizer, "digit: <image> is", config.media_tokens)
    assert prompt.count(MEDIA_SLOT) == 1
    slot = prompt.index(MEDIA_SLOT)
    idx = torch.tensor([prompt]).clamp_min(0)
    mask = torch.tensor([[t == MEDIA_SLOT for t in prompt]])
    with torch.no_grad():
        a = model(idx, torch.rand(1, 1, 28, 28), mask)
        b = model(idx, torch.rand(1, 1, 28, 28), mask)
    assert torch.equal(a[0, :slot], b[0, :slot])  # causal: positions before the image cannot see it
    assert not torch.allclose(a[0, slot:], b[0, slot:])
    with pytest.raises(GptkitError, match="has 0 media slots but its image gives 1 tokens"):
        model(idx, torch.rand(1, 1, 28, 28), torch.zeros_like(mask))
    with pytest.raises(GptkitError, match="1 <image> placeholder.* but 2 media item"):
        media_prompt(digits_tokenizer, "<image> digit:", 1, images=2)


def digit_examples(tokenizer: Tokenizer, media_tokens: int, rows: np.ndarray) -> MediaExamples:
    images, labels = bundled_mnist()
    prompt = media_prompt(tokenizer, "<image>digit:", media_tokens)
    return MediaExamples(images[rows, None].astype(np.float32) / 255.0, [prompt] * len(rows),
                         [tokenizer.encode(f" {labels[i]}") for i in rows])


@pytest.mark.parametrize("fusion", ["early", "cross"])
def test_a_short_run_reads_digits_through_the_image_path_and_a_blind_model_cannot(fusion, digits_tokenizer,
                                                                                 tmp_path):
    images, labels = bundled_mnist()
    train_rows, val_rows = stratified_indices(labels, (0.16, 0.04), seed=0)  # 800 / 200 real digits
    config = MultimodalConfig(fusion=fusion, vision=VisionConfig(kind="cnn", n_embd=32, n_layer=0))  # 49 tokens
    media_tokens = config.media_tokens if fusion == "early" else 0
    train_set = digit_examples(digits_tokenizer, media_tokens, train_rows)
    val_set = digit_examples(digits_tokenizer, media_tokens, val_rows)
    model = build_multimodal(small_gpt(digits_tokenizer.vocab_size), config)
    task = MultimodalTask(train_set, val_set, batch_size=32, pad_id=0, seed=0)
    result = train(model, task, TrainConfig(max_iters=300, learning_rate=3e-3, warmup_iters=10, eval_interval=300,
                                            weight_decay=0.0), tokenizer=digits_tokenizer, run_dir=tmp_path / "run",
                   quiet=True)
    assert result.selected_by == "val_accuracy"
    _, correct = answer_scores(model, val_set, pad_id=0)
    accuracy = sum(correct) / len(correct)
    blind = MediaExamples(np.zeros_like(val_set.media), val_set.prompts, val_set.answers)
    _, blind_correct = answer_scores(model, blind, pad_id=0)
    assert accuracy > 0.35, accuracy  # chance is 0.1; benchmarks/multimodal_quality.py trains for longer
    assert sum(blind_correct) / len(blind_correct) < 0.2  # the same model without the picture: chance
    # the best checkpoint is a self-describing multimodal checkpoint that the one loader reads back
    best = tmp_path / "run" / "best"
    assert checkpoint_kind(best) == "multimodal"
    loaded, _ = load_multimodal(best)
    _, loaded_correct = answer_scores(loaded, val_set, pad_id=0)
    assert sum(loaded_correct) / len(loaded_correct) == pytest.approx(result.best_value)
    llm = LLM.load(tmp_path / "run")
    assert llm.multimodal is not None and llm.multimodal.config.fusion == fusion
    assert isinstance(llm.generate("digit:", max_tokens=2, temperature=0)[0], str)  # text alone still works
    some = val_set.subset(range(40))
    if fusion == "early":  # generation through the one decode batch, the image in its placeholder's slots
        texts = llm.generate(["<image>digit:"] * len(some), images=[[image] for image in some.media], max_tokens=2,
                             temperature=0)
        answers = [digits_tokenizer.decode(a) for a in some.answers]
        _, scored = answer_scores(loaded, some, pad_id=0)
        assert [t[0] == a for t, a in zip(texts, answers)] == scored  # greedy decoding = the task's accuracy
        assert "".join(llm.stream("digit:", images=[some.media[0]], max_tokens=2, temperature=0)) == texts[0][0]
    else:
        with pytest.raises(GptkitError, match="needs an early-fusion checkpoint"):
            llm.generate("digit:", images=[some.media[0]], max_tokens=2)


def test_images_for_a_text_only_checkpoint_are_a_clear_error(tmp_path, digits_tokenizer):
    from gptkit.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "text", small_gpt(digits_tokenizer.vocab_size), digits_tokenizer)
    llm = LLM.load(tmp_path / "text")
    with pytest.raises(GptkitError, match="text-only: it cannot take images"):
        llm.generate("digit:", images=[np.zeros((1, 28, 28), np.float32)])


def test_image_files_and_bytes_are_read_or_refused_with_the_file_named(tmp_path):
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 0))  # fully transparent red: composited on white
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    path = tmp_path / "pic.png"
    rgba.save(path)
    grey = read_image(path, size=28, channels=1)
    assert grey.shape == (1, 28, 28) and grey.dtype == np.float32
    assert grey.max() == pytest.approx(1.0) and grey.min() < 0.5  # white background, one dark corner
    rgb = read_image(path, size=16, channels=3)
    assert rgb.shape == (3, 16, 16)
    assert np.allclose(decode_image_bytes(path.read_bytes(), size=28, channels=1), grey)
    broken = tmp_path / "broken.png"
    broken.write_bytes(path.read_bytes()[:60])
    with pytest.raises(GptkitError, match="broken.png"):
        read_image(broken, size=28, channels=1)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(GptkitError, match="text.png is not a readable image"):
        read_image(tmp_path / "text.png", size=28)
    with pytest.raises(GptkitError, match="does not exist"):
        read_image(tmp_path / "missing.png", size=28)
    with pytest.raises(GptkitError, match="upload is not a readable image"):
        decode_image_bytes(b"\x89PNG garbage", size=28, what="upload")


def test_gptkit_generate_takes_image_files(tmp_path, digits_tokenizer, run_cli):
    from gptkit.checkpoint import save_checkpoint

    config = MultimodalConfig(fusion="early", vision=VisionConfig(kind="cnn", n_embd=32, n_layer=0))
    model = build_multimodal(small_gpt(digits_tokenizer.vocab_size), config)
    save_checkpoint(tmp_path / "mm", model, digits_tokenizer)
    images, _ = bundled_mnist()
    Image.fromarray(images[0]).save(tmp_path / "zero.png")
    Image.fromarray(images[4999]).save(tmp_path / "nine.png")
    expected = LLM.load(tmp_path / "mm").generate("digit:", images=[str(tmp_path / "zero.png")], max_tokens=3,
                                                  temperature=0)[0]
    common = ["generate", "--checkpoint", str(tmp_path / "mm"), "--prompt", "digit:", "--max-tokens", "3",
              "--temperature", "0"]
    assert run_cli(*common, "--image", str(tmp_path / "zero.png"), "--no-stream").stdout == f"digit:{expected}\n"
    assert run_cli(*common, "--image", str(tmp_path / "zero.png")).stdout == f"digit:{expected}\n"  # streamed
    two = run_cli(*common, "--image", str(tmp_path / "zero.png"), str(tmp_path / "nine.png"), check=False)
    assert two.returncode == 2 and "105 tokens with its 2 image item(s) (49 tokens each)" in two.stderr  # > context 64
    assert "context length is 64" in two.stderr
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    bad = run_cli(*common, "--image", str(broken), check=False)
    assert bad.returncode == 2 and "broken.png" in bad.stderr and "Traceback" not in bad.stderr
    save_checkpoint(tmp_path / "text", small_gpt(digits_tokenizer.vocab_size), digits_tokenizer)
    text_only = run_cli("generate", "--checkpoint", str(tmp_path / "text"), "--image", str(tmp_path / "zero.png"),
                        check=False)
    assert text_only.returncode == 2 and "text-only" in text_only.stderr


def test_gptkit_finetune_task_multimodal_trains_reports_and_saves(tmp_path, digits_tokenizer, run_cli):
    from gptkit.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "base", small_gpt(digits_tokenizer.vocab_size), digits_tokenizer)
    out = tmp_path / "mm"
    proc = run_cli("finetune", "--checkpoint", str(tmp_path / "base"), "--task", "multimodal", "--data", "mnist",
                   "--fusion", "early", "--method", "full", "--max-iters", "300", "--eval-interval", "150",
                   "--batch-size", "32", "--learning-rate", "3e-3", "--out", str(out), "--quiet")
    report = json.loads((out / "report.json").read_text())["run"]
    assert report["test_rows"] == 500 and f"test accuracy {report['test_accuracy']:.4f}" in proc.stdout
    assert report["test_accuracy"] > 0.2 and report["test_accuracy_media_zeroed"] < 0.15  # chance: 0.1
    assert LLM.load(out).multimodal.config.fusion == "early"
    # --freeze-lm: only the encoder and projector train; every weight of the language model stays
    frozen = tmp_path / "frozen"
    run_cli("finetune", "--checkpoint", str(tmp_path / "base"), "--task", "multimodal", "--data", "mnist",
            "--method", "full", "--freeze-lm", "--max-iters", "10", "--eval-interval", "10", "--out", str(frozen),
            "--quiet")
    assert json.loads((frozen / "report.json").read_text())["run"]["trainable_parameters"] < report["trainable_parameters"]
    base = LLM.load(tmp_path / "base").model.state_dict()
    tuned = LLM.load(frozen).model.state_dict()
    assert all(torch.equal(base[k], tuned[k]) for k in base)
    bad = run_cli("finetune", "--checkpoint", str(tmp_path / "base"), "--task", "multimodal", "--data", "mnist",
                  "--image-size", "32", "--out", str(tmp_path / "bad"), check=False)
    assert bad.returncode == 2 and "28x28 grey" in bad.stderr
    # LoRA on the language model (the default method): recorded in multimodal.json, merged when loaded
    lora = tmp_path / "lora"
    run_cli("finetune", "--checkpoint", str(tmp_path / "base"), "--task", "multimodal", "--data", "mnist",
            "--fusion", "cross", "--max-iters", "30", "--eval-interval", "30", "--out", str(lora), "--quiet")
    assert json.loads((lora / "best" / "multimodal.json").read_text())["peft"]["method"] == "lora"
    loaded, _ = load_multimodal(lora / "best")
    unmerged, _ = load_multimodal(lora / "best", merge=False)
    some = digit_examples(digits_tokenizer, 0, np.arange(0, 5000, 250))
    with torch.no_grad():
        images_b, idx, mask, _ = __import__("gptkit.training.tasks.multimodal", fromlist=["answer_batch"]).answer_batch(
            some, list(range(len(some))), 0)
        assert torch.allclose(loaded(idx, images_b, mask), unmerged(idx, images_b, mask), atol=1e-4)


def test_multimodal_training_resumes_exactly(tmp_path, digits_tokenizer):
    _, labels = bundled_mnist()
    train_rows, val_rows = stratified_indices(labels, (0.04, 0.02), seed=0)
    config = MultimodalConfig(fusion="cross", vision=VisionConfig(kind="vit", n_embd=32, n_layer=1))
    data = [digit_examples(digits_tokenizer, 0, rows) for rows in (train_rows, val_rows)]

    def run(out, max_iters, resume=False):
        model = build_multimodal(small_gpt(digits_tokenizer.vocab_size), config)  # seeded: the same new weights
        task = MultimodalTask(*data, batch_size=8, seed=0)
        # lr_decay_iters fixed: the schedule of a 6-step run is then the first half of the 12-step one, as after a kill
        schedule = TrainConfig(max_iters=max_iters, eval_interval=6, warmup_iters=2, lr_decay_iters=12)
        train(model, task, schedule, tokenizer=digits_tokenizer,
              run_dir=out, resume=resume, quiet=True)
        return load_multimodal(out / "last")[0].state_dict()

    straight = run(tmp_path / "straight", 12)
    run(tmp_path / "split", 6)
    resumed = run(tmp_path / "split", 12, resume=True)
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
