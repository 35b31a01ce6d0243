"""Tokenizers behind one interface: SentencePiece trained by jaxlm, and through Hugging Face `tokenizers` WordPiece
from a Hugging Face vocab and byte-level BPE (GPT-2's), read, written and trained by jaxlm.

`Tokenizer` is what the rest of jaxlm sees: `encode` a batch of texts to int32 ids (no special tokens
added), `encode_words` for whole-word masking, `decode`, the special ids and the vocabulary size.
`SentencePieceTokenizer` is trained in-process (`train_sentencepiece`, `train_tokenizer_from_dataset`) with
its special tokens at fixed ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, then the 256 byte pieces
(byte fallback: no text becomes unknown), then the learned pieces. `WordPieceTokenizer` reads an imported
checkpoint's `vocab.txt` and `tokenizer_config.json` and gives the ids of transformers' `BertTokenizerFast`, run by
Hugging Face `tokenizers` as BertTokenizerFast is.
`ByteLevelBPETokenizer` reads `tokenizer.json` (or GPT-2's `vocab.json` + `merges.txt`) and gives the ids of
transformers' `GPT2TokenizerFast`; its one special token, <|endoftext|>, ends a document (`eos_id`) and pads.
A decoder's end of text is `eos_id`: <|endoftext|>, or [SEP] for SentencePiece and WordPiece.
Special tokens written inside a text are never parsed as special tokens: "[MASK]" in a text is text.
`load_tokenizer(dir)` picks the kind from the files in the directory.
"""

import abc
import io
import itertools
import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
import tokenizers
from tqdm import tqdm

from jaxlm import storage
from jaxlm.data import records, sources
from jaxlm.data.sentences import split_sentences

__all__ = [
    "Tokenizer",
    "SentencePieceTokenizer",
    "WordPieceTokenizer",
    "ByteLevelBPETokenizer",
    "load_tokenizer",
    "train_sentencepiece",
    "train_tokenizer_from_dataset",
    "SPECIAL_PIECES",
]

SPM_MODEL = "spm.model"
SPM_JSON = "spm.json"
WORDPIECE_VOCAB = "vocab.txt"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_TOKENIZER_JSON = "tokenizer.json"
BPE_VOCAB, BPE_MERGES = "vocab.json", "merges.txt"
EOS_PIECE = "<|endoftext|>"  # GPT-2's end of text
# The fixed ids of jaxlm's SentencePiece models.
SPECIAL_PIECES = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


class Tokenizer(abc.ABC):
    """Text <-> int32 ids. Subclasses set `vocab_size` and the five special ids in `__init__`."""

    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int
    eos_id: int | None  # what ends a document for a decoder; None: the tokenizer has none

    @abc.abstractmethod
    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of each text, int32 of shape (num_tokens,), without special tokens."""

    @abc.abstractmethod
    def encode_words(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids int32, word_start bool) per text, both (num_tokens,): True where a token begins a word."""

    @abc.abstractmethod
    def id_to_piece(self, token_id: int) -> str: ...

    @abc.abstractmethod
    def piece_to_id(self, piece: str) -> int: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`, special tokens ([PAD], [CLS], [SEP], [MASK]) dropped."""

    @abc.abstractmethod
    def save(self, directory: str | os.PathLike) -> None:
        """Writes the files `load_tokenizer(directory)` reads."""

    @property
    def special_ids(self) -> dict[str, int]:
        return {k: getattr(self, f"{k}_id") for k in SPECIAL_PIECES}

    def _set_special_ids(self, pieces: dict[str, str], ids: dict[str, int]) -> None:
        """Sets `<kind>_id` for each special token; `ids` maps the pieces found in the vocabulary."""
        for kind, piece in pieces.items():
            if piece not in ids:
                raise ValueError(f"{type(self).__name__}: the vocabulary has no {kind} token {piece!r}")
            setattr(self, f"{kind}_id", ids[piece])
        self.eos_id = self.sep_id


def _split(flat: np.ndarray, lengths: Sequence[int]) -> list[np.ndarray]:
    """`flat` cut into consecutive pieces of `lengths` (views)."""
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


# ----------------------------------------------------------------------------------------------- SentencePiece


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model whose vocabulary holds the pieces [PAD] [UNK] [CLS] [SEP] [MASK]."""

    def __init__(self, model_proto: bytes, description: dict | None = None):
        self.model_proto = model_proto
        self.description = description or {}
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.get_piece_size()
        pieces = [self._sp.id_to_piece(i) for i in range(self.vocab_size)]
        self._set_special_ids(SPECIAL_PIECES, {p: i for i, p in enumerate(pieces) if p in SPECIAL_PIECES.values()})
        # (vocab_size,) True for pieces that begin with the word-boundary mark.
        self._starts_word = np.array([p.startswith("\u2581") for p in pieces], dtype=bool)
        self._drop = np.zeros(self.vocab_size, bool)
        self._drop[[self.pad_id, self.cls_id, self.sep_id, self.mask_id]] = True

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SentencePieceTokenizer":
        directory = pathlib.Path(directory)
        description_file = directory / SPM_JSON
        description = json.loads(description_file.read_text()) if description_file.exists() else None
        return cls((directory / SPM_MODEL).read_bytes(), description)

    def _encode_flat(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        encoded = self._sp.encode(list(texts), out_type=int)
        return np.fromiter(itertools.chain.from_iterable(encoded), np.int32), [len(e) for e in encoded]

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        ids, lengths = self._encode_flat(texts)
        return _split(ids, lengths)

    def encode_words(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        ids, lengths = self._encode_flat(texts)
        return list(zip(_split(ids, lengths), _split(self._starts_word[ids], lengths)))

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        ids = np.asarray(ids, np.int64)
        return self._sp.decode(ids[~self._drop[ids]].tolist())

    def save(self, directory: str | os.PathLike) -> None:
        """spm.model and spm.json (what jaxlm reads), and tokenizer.json + tokenizer_config.json: the same
        tokenizer for transformers' AutoTokenizer (a PreTrainedTokenizerFast adding [CLS] A [SEP] B [SEP])."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SPM_MODEL).write_bytes(self.model_proto)
        description = {**self.description, "kind": "sentencepiece", "vocab_size": self.vocab_size,
                       "special_ids": self.special_ids}
        (directory / SPM_JSON).write_text(json.dumps(description, indent=2) + "\n")
        self.to_tokenizers().save(str(directory / HF_TOKENIZER_JSON))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "split_special_tokens": True,  # "[MASK]" written in a text is text, as in jaxlm
                  "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
                  **{f"{k}_token": v for k, v in SPECIAL_PIECES.items()}}
        (directory / HF_TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    def to_tokenizers(self) -> tokenizers.Tokenizer:
        """This model as a Hugging Face `tokenizers` pipeline with the same ids: SentencePiece's normalization
        (its precompiled character map, whitespace runs as one), the word-boundary mark before each word, the
        unigram lattice (or the BPE merges, ranked by the score of the piece they make) with byte fallback; the
        special tokens added, and BERT's [CLS] A [SEP] (B [SEP]) around the ids."""
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto.FromString(self.model_proto)
        pieces = [(p.piece, p.score) for p in proto.pieces]
        specials = set(SPECIAL_PIECES.values())
        if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
            # control pieces never match text in SentencePiece: a score no path through text takes
            model = tokenizers.models.Unigram([(p, -1e9 if p in specials else score) for p, score in pieces],
                                              unk_id=self.unk_id, byte_fallback=True)
        else:
            vocab = {p: i for i, (p, _) in enumerate(pieces)}
            merges = sorted(((left, piece[len(left):]) for piece, i in vocab.items() if piece not in specials
                             for left in (piece[:k] for k in range(1, len(piece)))
                             if left in vocab and piece[len(left):] in vocab),
                            key=lambda pair: (vocab[pair[0] + pair[1]], vocab[pair[0]], vocab[pair[1]]))
            model = tokenizers.models.BPE(vocab, merges, unk_token=SPECIAL_PIECES["unk"], byte_fallback=True,
                                          fuse_unk=True)
        tok = tokenizers.Tokenizer(model)
        charsmap = proto.normalizer_spec.precompiled_charsmap
        tok.normalizer = tokenizers.normalizers.Sequence(
            ([tokenizers.normalizers.Precompiled(charsmap)] if charsmap else [])
            + [tokenizers.normalizers.Replace(tokenizers.Regex(" {2,}"), " "), tokenizers.normalizers.Strip()])
        tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = tokenizers.decoders.Sequence([
            tokenizers.decoders.Metaspace(replacement="\u2581", prepend_scheme="always"),
            tokenizers.decoders.ByteFallback(), tokenizers.decoders.Fuse()])
        tok.add_special_tokens([tokenizers.AddedToken(p, special=True, normalized=False) for p in SPECIAL_PIECES.values()])
        cls, sep = SPECIAL_PIECES["cls"], SPECIAL_PIECES["sep"]
        tok.post_processor = tokenizers.processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, self.cls_id), (sep, self.sep_id)])
        return tok


def _reservoir(items: Iterable[str], size: int, seed: int) -> list[str]:
    """A uniform sample of at most `size` items (algorithm R), the same for the same seed and items."""
    rng = np.random.default_rng(seed)
    sample: list[str] = []
    for seen, item in enumerate(items):
        if seen < size:
            sample.append(item)
        else:
            slot = rng.integers(seen + 1)
            if slot < size:
                sample[slot] = item
    return sample


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        yield from split_sentences(text)


MODEL_TYPES = ("unigram", "bpe", "byte_bpe")  # SentencePiece's two, and GPT-2's byte-level BPE (`tokenizers`)


def _check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")


def _train(
    sentences: list[str], *, vocab_size: int, model_type: str, out_dir: str | os.PathLike, source: dict, seed: int
) -> Tokenizer:
    if not sentences:
        raise ValueError(f"no text to train a tokenizer on ({source})")
    if model_type == "byte_bpe":
        tokenizer = ByteLevelBPETokenizer.train(sentences, vocab_size)
        tokenizer.save(out_dir)
        return tokenizer
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        pad_id=0, pad_piece=SPECIAL_PIECES["pad"],
        unk_id=1, unk_piece=SPECIAL_PIECES["unk"],
        bos_id=-1, eos_id=-1,
        control_symbols=[SPECIAL_PIECES[k] for k in ("cls", "sep", "mask")],
        byte_fallback=True,
        split_digits=True,
        character_coverage=0.9995,
        max_sentence_length=16384,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    description = {"model_type": model_type, "num_sentences": len(sentences), "seed": seed, **source}
    tokenizer = SentencePieceTokenizer(model.getvalue(), description)
    tokenizer.save(out_dir)
    return tokenizer


def train_sentencepiece(
    texts: Iterable[str],
    *,
    vocab_size: int,
    model_type: str = "unigram",
    out_dir: str | os.PathLike,
    max_sentences: int = 1_000_000,
    seed: int = 0,
) -> SentencePieceTokenizer:
    """Trains on a uniform sample of at most `max_sentences` sentences of `texts`; saves into `out_dir`."""
    _check_model_type(model_type)
    sample = _reservoir(_sentences(texts), max_sentences, seed)
    return _train(sample, vocab_size=vocab_size, model_type=model_type, out_dir=out_dir,
                  source={"source": "texts"}, seed=seed)


def train_tokenizer_from_dataset(
    dataset: str,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    out_dir: str | os.PathLike,
    max_sentences: int = 1_000_000,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    text_field: str = "text",
    split: str = "train",
    seed: int = 0,
    **builder_kwargs,
) -> SentencePieceTokenizer:
    """Trains on the sentences of `dataset`'s documents read in a seeded random order until
    `max_sentences` are collected (so a huge corpus is not read whole); saves into `out_dir`."""
    _check_model_type(model_type)
    source = sources.open_source(dataset, split, data_dir=data_dir, path=path, **builder_kwargs)
    order = np.random.default_rng(seed).permutation(len(source))
    sentences: list[str] = []
    with tqdm(total=len(order), unit="doc", unit_scale=True, dynamic_ncols=True, leave=False,
              desc=f"reading {dataset} for the tokenizer (up to {max_sentences:,} sentences)") as bar:
        for start in range(0, len(order), 256):
            for example in source.__getitems__(order[start : start + 256].tolist()):
                sentences.extend(split_sentences(records.as_text(records.field(example, text_field))))
            bar.update(min(256, len(order) - start))
            if len(sentences) >= max_sentences:
                break
    described = {"dataset": dataset, "split": split, "text_field": text_field}
    return _train(sentences[:max_sentences], vocab_size=vocab_size, model_type=model_type,
                  out_dir=out_dir, source=described, seed=seed)


# ----------------------------------------------------------------------------------------------- WordPiece

class WordPieceTokenizer(Tokenizer):
    """BERT's WordPiece, run by Hugging Face `tokenizers` (Rust, batched): BertNormalizer (clean, CJK, accents,
    lower case), BertPreTokenizer (whitespace and punctuation), greedy longest-match-first pieces with '##', a
    word with no pieces (or longer than `max_chars_per_word`) one [UNK]."""

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        chinese_chars: bool = True,
        special_pieces: dict[str, str] | None = None,
        max_chars_per_word: int = 100,
    ):
        self.vocab = list(vocab)
        self.vocab_size = len(self.vocab)
        ids = {piece: i for i, piece in enumerate(self.vocab)}  # a repeated piece: the last id, as HF
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.chinese_chars = chinese_chars
        self.special_pieces = {**SPECIAL_PIECES, **(special_pieces or {})}
        self._set_special_ids(self.special_pieces, ids)
        self._tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(
            ids, unk_token=self.special_pieces["unk"], max_input_chars_per_word=max_chars_per_word))
        self._tok.normalizer = tokenizers.normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=self.strip_accents,
            lowercase=lowercase)
        self._tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
        self._tok.decoder = tokenizers.decoders.WordPiece(prefix="##")
        self._drop = {self.pad_id, self.cls_id, self.sep_id, self.mask_id}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WordPieceTokenizer":
        """Reads `vocab.txt` and, if present, `tokenizer_config.json` (do_lower_case, strip_accents, ...)."""
        directory = pathlib.Path(directory)
        vocab = (directory / WORDPIECE_VOCAB).read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab.pop()
        config_file = directory / HF_TOKENIZER_CONFIG
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        specials = {k: config[f"{k}_token"] for k in SPECIAL_PIECES if isinstance(config.get(f"{k}_token"), str)}
        return cls(
            vocab,
            lowercase=config.get("do_lower_case", True),
            strip_accents=config.get("strip_accents"),
            chinese_chars=config.get("tokenize_chinese_chars", True),
            special_pieces=specials,
        )

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_words(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for e in self._tok.encode_batch(list(texts), add_special_tokens=False):
            words = np.asarray(e.word_ids, np.int64)  # the pre-token (word) of each piece
            starts = np.ones(len(words), bool)
            starts[1:] = words[1:] != words[:-1]
            out.append((np.asarray(e.ids, np.int32), starts))
        return out

    def id_to_piece(self, token_id: int) -> str:
        return self.vocab[int(token_id)]

    def piece_to_id(self, piece: str) -> int:
        token_id = self._tok.token_to_id(piece)
        return self.unk_id if token_id is None else token_id

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        pieces = [self.vocab[i] for i in np.asarray(ids).tolist() if i not in self._drop]
        return " ".join(pieces).replace(" ##", "")

    def save(self, directory: str | os.PathLike) -> None:
        """vocab.txt and tokenizer_config.json: what transformers' AutoTokenizer loads as BertTokenizerFast."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / WORDPIECE_VOCAB).write_text("".join(p + "\n" for p in self.vocab), encoding="utf-8")
        config = {"do_lower_case": self.lowercase, "strip_accents": self.strip_accents,
                  "tokenize_chinese_chars": self.chinese_chars, "tokenizer_class": "BertTokenizer",
                  **{f"{k}_token": v for k, v in self.special_pieces.items()}}
        (directory / HF_TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- byte-level BPE


def _byte_level(model) -> tokenizers.Tokenizer:
    """A `tokenizers` BPE `model` behind GPT-2's byte-level pre-tokenizer (no prefix space) and decoder."""
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    return tok


class ByteLevelBPETokenizer(Tokenizer):
    """GPT-2's byte-level BPE, run by Hugging Face `tokenizers`: every byte has a token, so nothing is unknown;
    <|endoftext|> is the end of text and the padding. Written inside a text it is text, as [MASK] is."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, eos_piece: str = EOS_PIECE):
        self._tok = tokenizer
        self._tok.encode_special_tokens = True  # a special token written in a text is its bytes
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eos_piece = eos_piece
        self.eos_id = tokenizer.token_to_id(eos_piece)
        self.pad_id = self.eos_id
        self.unk_id = self.cls_id = self.sep_id = self.mask_id = None
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self._starts_word = np.zeros(self.vocab_size, bool)  # (vocab_size,) pieces that begin with a space
        self._starts_word[[i for piece, i in vocab.items() if piece.startswith("\u0120")]] = True

    @property
    def special_ids(self) -> dict[str, int]:
        return {"pad": self.pad_id, "eos": self.eos_id}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "ByteLevelBPETokenizer":
        """BPE merges learned from `texts` over the 256 byte symbols, <|endoftext|> at id 0."""
        tok = _byte_level(tokenizers.models.BPE())
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOS_PIECE], show_progress=True,
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ByteLevelBPETokenizer":
        """Reads tokenizer.json, or vocab.json + merges.txt (GPT-2's files); the end-of-text token is
        tokenizer_config.json's eos_token, else <|endoftext|>."""
        directory = pathlib.Path(directory)
        config_file = directory / HF_TOKENIZER_CONFIG
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        eos = config.get("eos_token", EOS_PIECE)
        eos = eos.get("content", EOS_PIECE) if isinstance(eos, dict) else eos
        if (directory / HF_TOKENIZER_JSON).is_file():
            spec = json.loads((directory / HF_TOKENIZER_JSON).read_text())
            kind = (spec.get("model") or {}).get("type")
            if kind != "BPE":
                raise ValueError(f"{directory / HF_TOKENIZER_JSON}: model type {kind!r}; jaxlm reads byte-level "
                                 "BPE tokenizer.json files (model type 'BPE')")
            return cls(tokenizers.Tokenizer.from_str(json.dumps(spec)), eos)
        tok = _byte_level(tokenizers.models.BPE.from_file(str(directory / BPE_VOCAB), str(directory / BPE_MERGES)))
        if tok.token_to_id(eos) is not None:
            tok.add_special_tokens([eos])
        return cls(tok, eos)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_words(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for ids in self.encode(texts):
            starts = self._starts_word[ids]
            starts[:1] = True
            out.append((ids, starts))
        return out

    def id_to_piece(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id))

    def piece_to_id(self, piece: str) -> int:
        return self._tok.token_to_id(piece)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tok.decode(np.asarray(ids).tolist(), skip_special_tokens=True)

    def save(self, directory: str | os.PathLike) -> None:
        """tokenizer.json, GPT-2's vocab.json + merges.txt, and a tokenizer_config.json with which transformers'
        AutoTokenizer loads it as GPT2TokenizerFast."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / HF_TOKENIZER_JSON))
        self._tok.model.save(str(directory))
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                  **{f"{k}_token": self.eos_piece for k in ("bos", "eos", "unk", "pad")}}
        (directory / HF_TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def saved_in(directory: str | os.PathLike) -> bool:
    """Whether `directory` (a local or gs:// one) holds a tokenizer `load_tokenizer` reads."""
    directory = storage.path(directory)
    return any((directory / f).is_file() for f in (SPM_MODEL, WORDPIECE_VOCAB, HF_TOKENIZER_JSON, BPE_MERGES))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved in directory `path`: jaxlm's SentencePiece (spm.model), a HF WordPiece vocab.txt, or a
    byte-level BPE (tokenizer.json, or vocab.json + merges.txt). A gs:// directory is downloaded first."""
    directory = storage.local(path)
    if (directory / SPM_MODEL).is_file():
        return SentencePieceTokenizer.load(directory)
    if (directory / WORDPIECE_VOCAB).is_file():
        return WordPieceTokenizer.load(directory)
    if (directory / HF_TOKENIZER_JSON).is_file() or (directory / BPE_MERGES).is_file():
        return ByteLevelBPETokenizer.load(directory)
    what = "is not a directory" if not directory.is_dir() else (
        f"holds none of {SPM_MODEL}, {WORDPIECE_VOCAB}, {HF_TOKENIZER_JSON}, {BPE_VOCAB} + {BPE_MERGES}")
    raise FileNotFoundError(
        f"no tokenizer at {directory}: it {what} (expected jaxlm's SentencePiece {SPM_MODEL}, a "
        f"Hugging Face WordPiece {WORDPIECE_VOCAB} or a byte-level BPE {HF_TOKENIZER_JSON})"
    )
