"""BERT masked-LM masking (google-research/bert's `create_masked_lm_predictions`), vectorised over a batch.

Randomness is counter-based: a token's random bits are a hash of (seed, epoch, example index, position), so an
example's mask depends on nothing else: not the batch it lands in, not the number of hosts, not what was drawn
before. A new epoch gives new masks; an evaluation set uses one fixed epoch and so the same masks every time.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_GOLDEN = 0x9E3779B97F4A7C15


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def example_bits(seed: int, epochs, indices, length: int) -> np.ndarray:
    """64 random bits per token: (batch, length) uint64, a pure function of (seed, epoch, index, position).

    epochs, indices: (batch,) ints (or an epoch broadcast to the batch).
    """
    indices = np.asarray(indices, np.int64)
    h = _mix(np.full(indices.shape, seed, np.uint64) ^ np.uint64(_GOLDEN))
    h = _mix(h + np.broadcast_to(np.asarray(epochs, np.int64), indices.shape).astype(np.uint64))
    h = _mix(h + indices.astype(np.uint64))  # (batch,)
    steps = (np.arange(1, length + 1, dtype=np.uint64) * np.uint64(_GOLDEN))[None, :]
    return _mix(h[:, None] + steps)  # (batch, length)


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    """What to mask: `probability` of the tokens (counting CLS/SEP, as the reference does), at most
    `max_predictions` per row, whole words when `whole_word`; 80% [MASK], 10% random id, 10% unchanged."""

    probability: float
    max_predictions: int
    whole_word: bool
    mask_id: int
    vocab_size: int


def mask_tokens(
    input_ids: np.ndarray,
    candidate: np.ndarray,
    word_start: np.ndarray,
    num_tokens: np.ndarray,
    bits: np.ndarray,
    spec: MaskingSpec,
) -> dict[str, np.ndarray]:
    """Chooses and replaces masked tokens, exactly as the reference's greedy loop, per row.

    input_ids (batch, length); candidate (batch, length) bool: maskable tokens (never CLS, SEP or padding);
    word_start (batch, length) bool (used with whole_word; a word also starts after any non-candidate);
    num_tokens (batch,): the row's tokens including specials; bits (batch, length) uint64 from `example_bits`.

    The words (tokens without whole_word) are visited in a random order and each is taken if it still fits in
    min(max_predictions, max(1, round(num_tokens * probability))) predictions: a word is never split.
    Returns input_ids (batch, length) with replacements, and masked_positions, masked_ids int32 and
    masked_weights float32, (batch, max_predictions), sorted by position, padding entries 0.
    """
    batch, length = input_ids.shape
    cols = np.arange(length)
    if spec.whole_word:
        after_other = np.pad(~candidate[:, :-1], ((0, 0), (1, 0)), constant_values=True)
        starts = candidate & (word_start | after_other)
    else:
        starts = candidate
    # A word runs from its start to just before the next start or non-candidate.
    boundary = np.where(starts | ~candidate, cols, length)
    next_boundary = np.minimum.accumulate(boundary[:, ::-1], axis=1)[:, ::-1]  # first boundary >= j
    next_after = np.pad(next_boundary[:, 1:], ((0, 0), (0, 1)), constant_values=length)
    word_length = np.where(starts, next_after - cols, 0)  # (batch, length), non-zero at word starts

    key = np.where(starts, (bits >> np.uint64(40)).astype(np.int64), 1 << 24)  # 24 random bits per word
    order = np.argsort(key, axis=1, kind="stable")  # word starts in random order, then the rest
    sorted_length = np.take_along_axis(word_length, order, axis=1)
    budget = np.minimum(spec.max_predictions, np.maximum(1, np.rint(num_tokens * spec.probability)))
    taken = np.zeros(batch, np.int64)
    take = np.zeros((batch, length), bool)
    for k in range(int(starts.sum(axis=1).max(initial=0))):
        fits = (sorted_length[:, k] > 0) & (taken + sorted_length[:, k] <= budget)
        take[:, k] = fits
        taken += np.where(fits, sorted_length[:, k], 0)
        if (taken >= budget).all():
            break
    start_taken = np.zeros((batch, length), bool)
    np.put_along_axis(start_taken, order, take, axis=1)
    owner = np.maximum.accumulate(np.where(starts, cols, 0), axis=1)  # the start of each token's word
    chosen = candidate & np.take_along_axis(start_taken, owner, axis=1)

    action = (bits >> np.uint64(24)) & np.uint64(0xFFFF)  # 16 bits: 80% mask, 10% keep, 10% random
    to_mask = chosen & (action < np.uint64(int(0.8 * 65536)))
    to_random = chosen & (action >= np.uint64(int(0.9 * 65536)))
    random_ids = ((bits & np.uint64(0xFFFFFF)) * np.uint64(spec.vocab_size)) >> np.uint64(24)
    masked_input = np.where(to_mask, spec.mask_id, input_ids)
    masked_input = np.where(to_random, random_ids.astype(np.int64), masked_input).astype(np.int32)

    width = spec.max_predictions
    chosen_cols = np.sort(np.where(chosen, cols, length), axis=1)[:, :width]  # (batch, <= width)
    chosen_cols = np.pad(chosen_cols, ((0, 0), (0, width - chosen_cols.shape[1])), constant_values=length)
    valid = chosen_cols < length  # (batch, width)
    positions = np.where(valid, chosen_cols, 0)
    return {
        "input_ids": masked_input,
        "masked_positions": positions.astype(np.int32),
        "masked_ids": np.where(valid, np.take_along_axis(input_ids, positions, axis=1), 0).astype(np.int32),
        "masked_weights": valid.astype(np.float32),
    }
