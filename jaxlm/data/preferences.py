"""Preference-pair examples: (chosen, rejected) laid out side by side, inputs (batch, 2, length).

Each side is a classification example of its text fields (`[CLS] response [SEP]`, or `[CLS] prompt [SEP]
response [SEP]` with an explicit prompt), tokenised and cached like classification examples; a batch pads both
sides of every pair to one length, so a pair is one row of the batch and sharding the batch over devices never
separates its two sides. Per pair: `margin` (the dataset's, else 0), `rating` (the two mean human ratings,
where the dataset has them) and `rated` (1 where it does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxlm.data import records
from jaxlm.data.classification import ClassificationExamples, classification_examples

PAIR_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "position_ids")


class PreferenceExamples:
    """Random access to preference pairs (the `pipeline.Examples` protocol); the same every epoch."""

    def __init__(self, chosen: ClassificationExamples, rejected: ClassificationExamples, margin: np.ndarray,
                 rating: np.ndarray | None):
        self.chosen, self.rejected = chosen, rejected
        self.max_seq_length = chosen.max_seq_length
        self.margin = margin.astype(np.float32)  # (pairs,)
        self.rating = rating  # (pairs, 2) float32, or None
        self.num_truncated = chosen.num_truncated + rejected.num_truncated
        lengths = (chosen.pad_lengths, rejected.pad_lengths)
        self.pad_lengths = None if lengths[0] is None else np.maximum(*lengths)

    def __len__(self) -> int:
        return len(self.margin)

    def head(self, count: int) -> "PreferenceExamples":
        """The first `count` pairs."""
        return PreferenceExamples(self.chosen.head(count), self.rejected.head(count), self.margin[:count],
                                  None if self.rating is None else self.rating[:count])

    def batch(self, indices: np.ndarray, epoch: int, length: int) -> dict[str, np.ndarray]:
        """Pairs `indices` (batch,), -1 a padding pair of weight 0: inputs (batch, 2, length), per pair
        example_weight, margin, rating (batch, 2) and rated."""
        sides = self.chosen.batch(indices, epoch, length), self.rejected.batch(indices, epoch, length)
        x = {key: np.stack([side[key] for side in sides], 1) for key in PAIR_INPUTS}
        valid = np.asarray(indices) >= 0
        index = np.where(valid, indices, 0)
        x["example_weight"] = sides[0]["example_weight"]
        x["margin"] = np.where(valid, self.margin[index], 0).astype(np.float32)
        if self.rating is None:
            x["rating"], x["rated"] = np.zeros((len(index), 2), np.float32), np.zeros(len(index), np.float32)
        else:
            x["rating"] = np.where(valid[:, None], self.rating[index], 0).astype(np.float32)
            x["rated"] = valid.astype(np.float32)
        return x


def preference_examples(
    source, *, tokenizer, text_fields: Sequence[str], max_seq_length: int, buckets: Sequence[int] = (),
    cache_dir: str | None = None, name: str | None = None,
) -> PreferenceExamples:
    """The pairs of a source with `chosen` and `rejected` (and `prompt`) fields. `text_fields` are the chosen
    side's, ('chosen',) or ('prompt', 'chosen'); the rejected side's are the same with 'rejected'."""
    fields = list(text_fields)
    features = set(source.dataset_info.features)
    if fields not in (["chosen"], ["prompt", "chosen"]):
        raise ValueError(f"config.data.text_fields={tuple(fields)}: a reward model reads ('chosen',), or "
                         "('prompt', 'chosen') for explicit prompts (the rejected side is the same with 'rejected')")
    missing = {"chosen", "rejected", *fields} - features
    if missing:
        raise KeyError(f"no field {sorted(missing)[0]!r} in the dataset's records (a preference dataset has "
                       f"chosen and rejected); fields: {', '.join(sorted(features))}")
    if "prompt" in features and "prompt" not in fields:
        raise ValueError("the dataset has prompts: set config.data.text_fields=('prompt', 'chosen')")
    sides = [classification_examples(source, tokenizer=tokenizer, text_fields=fields[:-1] + [side], label_field=None,
                                     max_seq_length=max_seq_length, buckets=buckets, cache_dir=cache_dir, name=name)
             for side in ("chosen", "rejected")]
    wanted = [f for f in ("margin", "chosen_rating", "rejected_rating") if f in features]
    values = {f: [] for f in wanted}
    for record in records.iter_records(source) if wanted else ():
        for f in wanted:
            values[f].append(float(record[f]))
    margin = np.asarray(values["margin"], np.float32) if "margin" in values else np.zeros(len(source), np.float32)
    rating = None
    if "chosen_rating" in values and "rejected_rating" in values:
        rating = np.stack([values["chosen_rating"], values["rejected_rating"]], 1).astype(np.float32)
    return PreferenceExamples(*sides, margin, rating)
