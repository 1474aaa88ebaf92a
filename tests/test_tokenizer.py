"""Tokenizers round-trip any UTF-8 text, and keep their special tokens."""

import pytest

from gptkit.errors import GptkitError
from gptkit.tokenizer import CHAT_TOKENS, EOS, PAD, StreamDecoder, Tokenizer

SAMPLES = [
    "plain ASCII, with punctuation!?",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\nand\n\n\nblank lines",
    "中文：床前明月光，疑是地上霜。",
    "emoji 🙂👍🏽 and a family 👨‍👩‍👧 (zero-width joiners)",
    "accents: naïve café, ß, Ωmega, עברית, العربية",
    "",
]


@pytest.fixture(scope="module")
def tokenizers(shakespeare_text):
    corpus = shakespeare_text[:200_000]
    return {"char": Tokenizer.train_char([corpus]), "bpe": Tokenizer.train_bpe([corpus], vocab_size=400)}


@pytest.mark.parametrize("kind", ["char", "bpe"])
@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_lossless(tokenizers, kind, text):
    tok = tokenizers[kind]
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_stream_decoder_pieces_add_up_to_the_text(tokenizers, kind):
    tok = tokenizers[kind]
    text = "".join(SAMPLES)
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in tok.encode(text)]
    assert "".join(pieces) + decoder.flush() == text
    assert not any("\ufffd" in p for p in pieces), "a partial UTF-8 character leaked out"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_special_tokens_are_reserved_and_single_ids(tokenizers, kind):
    tok = tokenizers[kind]
    for special in [EOS, PAD, *CHAT_TOKENS]:
        ids = tok.encode(special)
        assert len(ids) == 1 and tok.id_to_token(ids[0]) == special
    assert tok.eos_id == tok.token_to_id(EOS) and tok.pad_id == tok.token_to_id(PAD)
    assert tok.encode("x", add_bos=True)[0] == tok.bos_id


def test_bpe_compresses_and_char_does_not(tokenizers, shakespeare_text):
    text = shakespeare_text[-20_000:]
    assert len(tokenizers["char"].encode(text)) == len(text)  # ASCII text: one token per character
    assert len(tokenizers["bpe"].encode(text)) < 0.7 * len(text)


def test_save_and_load_keep_ids(tmp_path, tokenizers):
    for kind, tok in tokenizers.items():
        tok.save(tmp_path)
        again = Tokenizer.from_file(tmp_path / "tokenizer.json")
        assert again.encode(SAMPLES[4]) == tok.encode(SAMPLES[4])
        assert again.describe()["kind"] == kind


def test_bad_inputs(tmp_path):
    with pytest.raises(GptkitError, match="too small"):
        Tokenizer.train_bpe(["abc"], vocab_size=100)
    with pytest.raises(GptkitError, match="empty"):
        Tokenizer.train_char([""])
    with pytest.raises(GptkitError, match="no tokenizer"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(GptkitError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(tmp_path)
