"""Fixed-shape BERT inputs from spans of a flat token array: `[CLS] a [SEP] b [SEP]` pairs and packed rows.

Examples are stored as spans (start, length) into one flat int32 token array, so laying a batch out is a few
vectorised gathers. Every layout also returns `candidate` (tokens that masking may choose: not CLS, SEP or
padding) and `word_start` (whole-word boundaries), both (batch, length) bool.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The ids a layout writes, read off a tokenizer (WordPiece and SentencePiece ids differ)."""

    pad: int
    cls: int
    sep: int
    mask: int
    vocab_size: int

    @classmethod
    def of(cls, tokenizer) -> SpecialIds:
        return cls(
            pad=tokenizer.pad_id,
            cls=tokenizer.cls_id,
            sep=tokenizer.sep_id,
            mask=tokenizer.mask_id,
            vocab_size=tokenizer.vocab_size,
        )


def ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n): (sum(lengths),) int64."""
    starts = np.asarray(starts, np.int64)
    lengths = np.asarray(lengths, np.int64)
    firsts = np.cumsum(lengths) - lengths  # where each range begins in the output
    return np.repeat(starts - firsts, lengths) + np.arange(lengths.sum(), dtype=np.int64)


def truncated_lengths(len_a, len_b, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Lengths after removing one token at a time from the longer side (b on ties) until a + b <= max_tokens.

    This is google-research/bert's `truncate_seq_pair` and Hugging Face's `longest_first`, in closed form:
    the longer side is cut down to the shorter, then the two are cut alternately, b first.
    """
    len_a = np.asarray(len_a, np.int64)
    len_b = np.asarray(len_b, np.int64)
    excess = np.maximum(len_a + len_b - max_tokens, 0)
    diff = len_a - len_b
    cut_a = np.clip(diff, 0, excess)
    cut_b = np.clip(-diff, 0, excess)
    rest = excess - cut_a - cut_b
    return len_a - cut_a - rest // 2, len_b - cut_b - (rest + 1) // 2


def layout_pairs(
    token_ids: np.ndarray,
    word_starts: np.ndarray | None,
    a_start: np.ndarray,
    a_length: np.ndarray,
    b_start: np.ndarray,
    b_length: np.ndarray,
    length: int,
    ids: SpecialIds,
) -> dict[str, np.ndarray]:
    """`[CLS] a [SEP] b [SEP]` (or `[CLS] a [SEP]` where b_length is 0), padded to `length`.

    token_ids, word_starts: (tokens,) the flat arrays the spans index; spans (batch,); each pair must fit:
    a + b + 3 <= length (a + 2 without b). Returns input_ids, token_type_ids, attention_mask, position_ids
    (batch, length) int32 and candidate, word_start (batch, length) bool.
    """
    batch = len(a_start)
    j = np.arange(length)[None, :]  # (1, length)
    la = np.asarray(a_length, np.int64)[:, None]  # (batch, 1)
    lb = np.asarray(b_length, np.int64)[:, None]
    in_a = (j >= 1) & (j <= la)
    in_b = (j >= la + 2) & (j < la + 2 + lb)
    sep = (j == la + 1) | ((j == la + 2 + lb) & (lb > 0))
    used = la + 2 + np.where(lb > 0, lb + 1, 0)  # (batch, 1) tokens before padding
    src = np.where(in_a, a_start[:, None] + j - 1, b_start[:, None] + j - la - 2)  # (batch, length)
    src = np.where(in_a | in_b, src, 0)
    candidate = in_a | in_b
    input_ids = np.where(candidate, token_ids[src], ids.pad)
    input_ids[:, 0] = ids.cls
    input_ids[sep] = ids.sep
    starts = word_starts[src] & candidate if word_starts is not None else candidate
    return {
        "input_ids": input_ids.astype(np.int32),
        "token_type_ids": ((j >= la + 2) & (j < used)).astype(np.int32),
        "attention_mask": (j < used).astype(np.int32),
        "position_ids": np.broadcast_to(j, (batch, length)).astype(np.int32),
        "candidate": candidate,
        "word_start": starts,
    }


def layout_pieces(
    token_ids: np.ndarray,
    word_starts: np.ndarray,
    piece_row: np.ndarray,
    piece_col: np.ndarray,
    piece_start: np.ndarray,
    piece_length: np.ndarray,
    piece_segment: np.ndarray,
    batch: int,
    length: int,
    ids: SpecialIds,
) -> dict[str, np.ndarray]:
    """Packed rows: each piece written as `[CLS] tokens [SEP]` at (piece_row, piece_col), its positions from 0.

    pieces: (pieces,) arrays, piece_row in [0, batch); pieces of a row must not overlap. Returns the pair
    layout's keys plus segment_ids (batch, length) int32: piece_segment for a piece's tokens, 0 for padding.
    """
    span = np.asarray(piece_length, np.int64) + 2  # CLS + tokens + SEP
    flat = ragged_arange(np.asarray(piece_row, np.int64) * length + piece_col, span)  # (tokens,) into batch*length
    offset = ragged_arange(np.zeros_like(span), span)  # 0 at CLS, length + 1 at SEP
    piece = np.repeat(np.arange(len(span)), span)
    inside = (offset > 0) & (offset < span[piece] - 1)
    src = np.where(inside, piece_start[piece] + offset - 1, 0)
    values = np.where(inside, token_ids[src], ids.sep)
    values[offset == 0] = ids.cls

    def scatter(fill, vals, dtype):
        out = np.full(batch * length, fill, dtype)
        out[flat] = vals
        return out.reshape(batch, length)

    return {
        "input_ids": scatter(ids.pad, values, np.int32),
        "token_type_ids": np.zeros((batch, length), np.int32),
        "attention_mask": scatter(0, 1, np.int32),
        "position_ids": scatter(0, offset, np.int32),
        "segment_ids": scatter(0, np.asarray(piece_segment)[piece], np.int32),
        "candidate": scatter(False, inside, bool),
        "word_start": scatter(False, word_starts[src] & inside, bool),
    }
