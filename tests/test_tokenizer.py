"""Tokenizers: SentencePiece training and its fixed special ids, WordPiece parity with transformers."""

import json
import unicodedata

import numpy as np
import pytest

from jaxlm.data import tokenizer as tok
from jaxlm.data.builders import debian
from minilm import minilm_dir

UNICODE_TEXTS = [
    "Café naïve résumé — “quoted” ‘single’ … l’été",
    "Ünïcödé ÀÉÎÕÜ ß ẞ İstanbul ΟΔΟΣ Σίσυφος Ѐ Москва Ёлка",
    "日本語のテキスト、中文字符。한국어 텍스트 ﾊﾝｶｸ ＦＵＬＬＷＩＤＴＨ",
    "emoji 😀👍🏽 ok ﬁ ligature ½ ² ℃ № ™ Ⅻ",
    "tab\there\x0bvt\x0cff\x85nel\u2028ls nbsp\u00a0x zwsp\u200bx soft\u00adhyphen",
    "a" * 150 + " word",
    "$3.14 + 2^10 = 1,027; e-mail: x@y.com #tag 100% don't Mr. O'Neil's",
    "Control\x00chars\x01\x7f and \ufffd replacement",
    "عربي فارسی עברית हिन्दी भाषा x\u0301y",
]


@pytest.fixture(scope="module")
def fortunes() -> list[str]:
    return [f.text for f in debian.read_fortunes()]


@pytest.fixture(scope="module")
def sentencepiece(fortunes, tmp_path_factory) -> tok.SentencePieceTokenizer:
    out = tmp_path_factory.mktemp("spm")
    return tok.train_sentencepiece(fortunes, vocab_size=600, model_type="unigram", out_dir=out, max_sentences=3000)


@pytest.fixture(scope="module")
def minilm() -> tok.WordPieceTokenizer:
    return tok.load_tokenizer(minilm_dir())


# ------------------------------------------------------------------------------------------------ SentencePiece


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_fixed_special_ids_and_exact_vocab(fortunes, tmp_path, model_type):
    t = tok.train_sentencepiece(fortunes, vocab_size=500, model_type=model_type, out_dir=tmp_path, max_sentences=2000)
    assert t.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert [t.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert t.vocab_size == 500
    assert t.id_to_piece(5) == "<0x00>"  # the byte pieces follow the special tokens
    # What `convert --to-hf` writes beside the model: transformers' AutoTokenizer loads it and gives jaxlm's ids,
    # with BERT's [CLS] A [SEP] (B [SEP]) around them; special tokens written in a text stay text.
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    texts = [*fortunes[:300], *UNICODE_TEXTS, "  runs   of spaces\tand\nlines ", "[MASK] [CLS] in a text", "12345", ""]
    cls, sep = t.cls_id, t.sep_id
    assert hf(texts)["input_ids"] == [[cls, *ids.tolist(), sep] for ids in t.encode(texts)]
    pair = hf(texts[0], texts[1])
    assert pair["input_ids"] == [cls, *t.encode(texts[:1])[0].tolist(), sep, *t.encode(texts[1:2])[0].tolist(), sep]
    assert pair["token_type_ids"] == [0] * (len(t.encode(texts[:1])[0]) + 2) + [1] * (len(t.encode(texts[1:2])[0]) + 1)


def test_sentencepiece_byte_fallback_never_unknown(sentencepiece):
    for text in UNICODE_TEXTS[:4]:
        (ids,) = sentencepiece.encode([text])
        assert ids.dtype == np.int32
        assert sentencepiece.unk_id not in ids
        assert sentencepiece.decode(ids) == unicodedata.normalize("NFKC", " ".join(text.split()))


def test_sentencepiece_special_tokens_in_text_are_text(sentencepiece):
    (ids,) = sentencepiece.encode(["a [MASK] b [CLS]"])
    assert not set(ids.tolist()) & {0, 2, 3, 4}
    assert sentencepiece.decode([2, *ids.tolist(), 3, 0, 0]) == "a [MASK] b [CLS]"  # specials dropped


def test_sentencepiece_word_starts(sentencepiece):
    [(ids, starts)] = sentencepiece.encode_words(["Unbelievably, the quick brown fox jumped."])
    pieces = [sentencepiece.id_to_piece(i) for i in ids]
    assert starts.tolist() == [p.startswith("\u2581") for p in pieces]
    words = ["".join(pieces[s:e]) for s, e in zip(np.flatnonzero(starts), [*np.flatnonzero(starts)[1:], len(ids)])]
    assert [w.replace("\u2581", "") for w in words] == ["Unbelievably,", "the", "quick", "brown", "fox", "jumped."]


def test_sentencepiece_is_deterministic_and_saved(fortunes, sentencepiece, tmp_path):
    again = tok.train_sentencepiece(fortunes, vocab_size=600, model_type="unigram", out_dir=tmp_path, max_sentences=3000)
    assert again.model_proto == sentencepiece.model_proto
    loaded = tok.load_tokenizer(tmp_path)
    assert isinstance(loaded, tok.SentencePieceTokenizer)
    assert [a.tolist() for a in loaded.encode(fortunes[:50])] == [a.tolist() for a in sentencepiece.encode(fortunes[:50])]
    described = json.loads((tmp_path / "spm.json").read_text())
    assert described["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert described["num_sentences"] == 3000 and described["model_type"] == "unigram"


def test_reservoir_sample_is_uniform_and_seeded():
    items = [str(i) for i in range(1000)]
    sample = tok._reservoir(iter(items), 100, seed=3)
    assert len(sample) == 100 and len(set(sample)) == 100
    assert sample == tok._reservoir(iter(items), 100, seed=3) != tok._reservoir(iter(items), 100, seed=4)
    assert 300 < np.mean([int(s) for s in sample]) < 700  # not just the first items
    assert tok._reservoir(iter(items[:10]), 100, seed=0) == items[:10]


def test_train_tokenizer_from_dataset(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [f"Document {i} says hello. It has two sentences about topic {i % 7}." for i in range(300)]
    (corpus / "a.txt").write_text("\n\n".join(docs))
    t = tok.train_tokenizer_from_dataset(
        "local_text", path=corpus, data_dir=tmp_path / "tfds", vocab_size=300, model_type="bpe",
        out_dir=tmp_path / "tok", max_sentences=100,
    )
    assert t.description["dataset"] == "local_text" and t.description["num_sentences"] == 100
    assert tok.load_tokenizer(tmp_path / "tok").vocab_size == 300
    with pytest.raises(KeyError, match="no field 'body'.*fields: \\['source', 'text'\\]"):
        tok.train_tokenizer_from_dataset("local_text", path=corpus, data_dir=tmp_path / "tfds", vocab_size=300,
                                         out_dir=tmp_path / "tok2", text_field="body")


def test_train_rejects_unknown_model_type(tmp_path):
    with pytest.raises(ValueError, match=r"model_type must be one of \('unigram', 'bpe', 'byte_bpe'\), got 'char'"):
        tok.train_sentencepiece(["some text"], vocab_size=300, model_type="char", out_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ WordPiece


def test_wordpiece_equals_bert_tokenizer_fast(minilm, fortunes):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir()))
    glosses = [s.gloss for s in debian.read_wordnet()[::40]]
    texts = fortunes + glosses + UNICODE_TEXTS
    ours = minilm.encode(texts)
    theirs = hf(texts, add_special_tokens=False)["input_ids"]
    mismatches = [(t, hf.convert_ids_to_tokens(a), hf.convert_ids_to_tokens(b))
                  for t, a, b in zip(texts, ours, theirs) if a.tolist() != b]
    assert not mismatches, mismatches[:3]
    assert sum(len(a) for a in ours) > 400_000
    assert minilm.special_ids == {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    assert minilm.vocab_size == 30522 == hf.vocab_size


def test_wordpiece_cased_config_follows_tokenizer_config(minilm, tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = minilm.vocab + ["Hello", "Café", "##É", "É"]
    (tmp_path / "vocab.txt").write_text("".join(p + "\n" for p in vocab))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = tok.load_tokenizer(tmp_path)
    hf = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))  # reads the same two files
    texts = ["Hello Café ÉCOLE école", *UNICODE_TEXTS]
    assert [a.tolist() for a in cased.encode(texts)] == hf(texts, add_special_tokens=False)["input_ids"]
    assert cased.encode(["Hello"])[0].tolist() == [len(minilm.vocab)]


def test_wordpiece_pieces_word_starts_and_unknowns(minilm):
    [(ids, starts)] = minilm.encode_words(["Unaffable, hyper-tokenization!"])
    pieces = [minilm.id_to_piece(i) for i in ids]
    assert "".join(p.removeprefix("##") for p in pieces) == "unaffable,hyper-tokenization!"
    assert starts.tolist() == [not p.startswith("##") for p in pieces]
    assert [p for p, s in zip(pieces, starts) if s][:2] == ["una", ","]
    (long_word,) = minilm.encode(["x" * 101])
    assert long_word.tolist() == [minilm.unk_id]
    assert minilm.encode(["x" * 100])[0].tolist() != [minilm.unk_id]
    assert [ids.shape for ids in minilm.encode(["", "a", ""])] == [(0,), (1,), (0,)]


def test_wordpiece_decode_save_and_special_text(minilm, tmp_path):
    (ids,) = minilm.encode(["The Quick, brown fox."])
    assert minilm.decode([minilm.cls_id, *ids, minilm.sep_id, minilm.pad_id]) == "the quick , brown fox ."
    (masked,) = minilm.encode(["a [MASK] b"])  # written special tokens stay text
    assert minilm.mask_id not in masked
    minilm.save(tmp_path)
    again = tok.load_tokenizer(tmp_path)
    assert again.vocab == minilm.vocab and again.lowercase and again.special_ids == minilm.special_ids


def test_load_tokenizer_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no tokenizer at {tmp_path}: it holds none of spm.model, vocab.txt, tokenizer.json"):
        tok.load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        tok.load_tokenizer(tmp_path / "missing")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match="no cls token '\\[CLS\\]'"):
        tok.load_tokenizer(tmp_path)


def test_batches_encode_as_single_texts(sentencepiece, minilm, fortunes):
    texts = ["", *fortunes[:30], "", "x"]
    for t in (sentencepiece, minilm):
        batch = t.encode_words(texts)
        alone = [t.encode_words([text])[0] for text in texts]
        assert [ids.tolist() for ids, _ in batch] == [ids.tolist() for ids, _ in alone]
        assert [ids.tolist() for ids in t.encode(texts)] == [ids.tolist() for ids, _ in alone]
        assert [s.tolist() for _, s in batch] == [s.tolist() for _, s in alone]
        assert batch[0][0].shape == (0,) and batch[0][1].dtype == bool
        assert t.encode([]) == [] and t.encode_words([]) == []
