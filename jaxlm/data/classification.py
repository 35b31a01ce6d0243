"""Text and text-pair classification examples: `[CLS] a [SEP] b [SEP]`, truncated longest-first, padded.

A dataset is tokenised once (cached like the pretraining corpus) into spans of one flat token array; a batch
is laid out on demand, padded to max_seq_length or, with length buckets, to the smallest bucket that holds
its longest example.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from jaxlm.data import array_cache, records
from jaxlm.data.inputs import SpecialIds, layout_pairs, truncated_lengths

FORMAT_VERSION = 1  # bump when the cached arrays change meaning


class ClassificationExamples:
    """Random access to classification examples; they are the same every epoch."""

    def __init__(self, arrays: dict[str, np.ndarray], max_seq_length: int, buckets: Sequence[int], ids: SpecialIds):
        self.arrays, self.max_seq_length, self.ids, self.buckets = arrays, max_seq_length, ids, tuple(buckets)
        self.num_truncated = int(arrays["truncated"].sum())  # texts cut to fit max_seq_length
        if buckets:
            bounds = np.array(sorted({b for b in buckets if b < max_seq_length} | {max_seq_length}))
            self.pad_lengths = bounds[np.searchsorted(bounds, self.lengths)]  # (examples,)
        else:
            self.pad_lengths = None  # every example padded to max_seq_length

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of each example with CLS and SEPs: (examples,)."""
        a, b = self.arrays["a_length"], self.arrays["b_length"]
        return a + 2 + np.where(b > 0, b + 1, 0)

    def __len__(self) -> int:
        return len(self.arrays["label"])

    def head(self, count: int) -> "ClassificationExamples":
        """The first `count` examples."""
        arrays = {k: v if k == "token_ids" else v[:count] for k, v in self.arrays.items()}
        return ClassificationExamples(arrays, self.max_seq_length, self.buckets, self.ids)

    def batch(self, indices: np.ndarray, epoch: int, length: int) -> dict[str, np.ndarray]:
        """The examples `indices` (batch,) padded to `length`; index -1 gives a blank row of example_weight 0.

        `epoch` is unused: classification examples do not change between epochs.
        """
        del epoch
        indices = np.asarray(indices, np.int64)
        valid = indices >= 0
        index = np.where(valid, indices, 0)
        a = self.arrays
        x = layout_pairs(
            a["token_ids"], None, a["a_start"][index], a["a_length"][index],
            a["b_start"][index], a["b_length"][index], length, self.ids,
        )
        del x["candidate"], x["word_start"]
        for key, value in x.items():
            value[~valid] = self.ids.pad if key == "input_ids" else 0
        x["label"] = np.where(valid, a["label"][index], 0).astype(a["label"].dtype)
        x["example_weight"] = valid.astype(np.float32)
        return x


def tokenize_examples(
    rows: Sequence[dict], tokenizer, text_fields: Sequence[str], label_field: str | None, max_seq_length: int,
    regression: bool,
) -> dict[str, np.ndarray]:
    """Records -> truncated token spans: a_start, a_length, b_start, b_length into token_ids; label; truncated.

    The pair is cut to max_seq_length - 3 (a single text to max_seq_length - 2), one token at a time from
    the end of the longer text (Hugging Face's `longest_first`). Without a label_field every label is -1.
    """
    texts = [[records.as_text(records.field(r, name)) for r in rows] for name in text_fields]
    encoded = [tokenizer.encode(column) for column in texts]
    a_ids, b_ids = encoded[0], (encoded[1] if len(encoded) > 1 else [np.zeros(0, np.int32)] * len(rows))
    la = np.array([len(x) for x in a_ids], np.int64)  # (examples,)
    lb = np.array([len(x) for x in b_ids], np.int64)
    new_a, new_b = truncated_lengths(la, lb, max_seq_length - 1 - len(text_fields))
    parts_a = [x[:n] for x, n in zip(a_ids, new_a.tolist())]
    parts_b = [x[:n] for x, n in zip(b_ids, new_b.tolist())]
    a_start = np.cumsum(new_a) - new_a
    if label_field is None:
        labels = np.full(len(rows), -1)
    else:
        labels = np.array([np.asarray(records.field(r, label_field)).item() for r in rows])
    return {
        "token_ids": np.concatenate([np.zeros(0, np.int32), *parts_a, *parts_b]).astype(np.int32),
        "a_start": a_start,
        "a_length": new_a,
        "b_start": new_a.sum() + np.cumsum(new_b) - new_b,
        "b_length": new_b,
        "label": labels.astype(np.float32 if regression else np.int32),
        "truncated": (new_a < la) | (new_b < lb),
    }


def classification_examples(
    source,
    *,
    tokenizer,
    text_fields: Sequence[str],
    label_field: str | None,
    max_seq_length: int,
    buckets: Sequence[int] = (),
    regression: bool = False,
    cache_dir: str | None = None,
    name: str | None = None,
) -> ClassificationExamples:
    """Classification examples of a random-access source: one text field, or two for a pair.

    labels int32 (float32 with `regression`); `buckets` (e.g. (32, 64)) pads batches to the smallest bucket
    holding their longest example. Tokenised once per (source, tokenizer, fields, max length) and cached
    under cache_dir when given; `name` is part of the cache key, beside `array_cache.source_fingerprint`.
    """
    if not 1 <= len(text_fields) <= 2:
        raise ValueError(f"one text field or a pair, not {text_fields!r}")

    def build() -> dict[str, np.ndarray]:
        def tokenize(rows):
            return tokenize_examples(rows, tokenizer, text_fields, label_field, max_seq_length, regression)

        it = records.iter_records(source)
        parts = [tokenize(rows) for rows in iter(lambda: list(itertools.islice(it, records.CHUNK * 8)), [])]
        return _concatenate(parts or [tokenize([])])

    def parts() -> dict:
        return {
            "kind": "classification",
            "version": FORMAT_VERSION,
            "source": name,
            "fingerprint": array_cache.source_fingerprint(source, list(text_fields)),
            "tokenizer": array_cache.tokenizer_fingerprint(tokenizer),
            "text_fields": list(text_fields),
            "label_field": label_field,
            "max_seq_length": max_seq_length,
            "regression": regression,
        }

    arrays = array_cache.cached_arrays(cache_dir, parts, build)
    return ClassificationExamples(arrays, max_seq_length, buckets, SpecialIds.of(tokenizer))


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Chunks of `tokenize_examples` as one: spans shifted by the tokens before them."""
    shifts = np.cumsum([0] + [len(p["token_ids"]) for p in parts[:-1]])
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for key in ("a_start", "b_start"):
        out[key] = np.concatenate([p[key] + s for p, s in zip(parts, shifts)])
    return out
