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


def pair_fields(source, text_fields: Sequence[str], expected: str) -> list[str]:
    """`text_fields` checked against a preference source's fields: ('chosen',) or ('prompt', 'chosen')."""
    fields = list(text_fields)
    features = set(source.dataset_info.features)
    if fields not in (["chosen"], ["prompt", "chosen"]):
        raise ValueError(f"config.data.text_fields={tuple(fields)}: {expected} (the rejected side is the same with "
                         "'rejected')")
    missing = {"chosen", "rejected", *fields} - features
    if missing:
        raise KeyError(f"no field {sorted(missing)[0]!r} in the dataset's records (a preference dataset has "
                       f"chosen and rejected); fields: {', '.join(sorted(features))}")
    if "prompt" in features and "prompt" not in fields:
        raise ValueError("the dataset has prompts: set config.data.text_fields=('prompt', 'chosen')")
    return fields


def preference_examples(
    source, *, tokenizer, text_fields: Sequence[str], max_seq_length: int, buckets: Sequence[int] = (),
    cache_dir: str | None = None, name: str | None = None,
) -> PreferenceExamples:
    """The pairs of a source with `chosen` and `rejected` (and `prompt`) fields. `text_fields` are the chosen
    side's, ('chosen',) or ('prompt', 'chosen'); the rejected side's are the same with 'rejected'."""
    fields = pair_fields(source, text_fields, "a reward model reads ('chosen',), or ('prompt', 'chosen') for "
                                              "explicit prompts")
    features = set(source.dataset_info.features)
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


class DecoderPairs:
    """Preference pairs for a decoder (DPO and its family), packed: the two sides of a pair, `prompt chosen <eos>`
    and `prompt rejected <eos>`, lie side by side in one row as segments 2p + 1 and 2p + 2 of its p-th pair, and a
    row holds as many pairs as fit its length (at most `pairs_per_row`, in the data's order). Each segment attends
    only to itself and its positions restart; the targets are each side's response and its end of text.

    A batch: input_ids, attention_mask, segment_ids, targets (batch, length) int32, target_weights (batch, length)
    float32 as a causal-LM batch has them; pair_weight (batch, pairs_per_row) float32 (1 for a real pair), and with
    `ref_logps` set (the reference model's, `jaxlm.tasks.dpo`) ref_logps (batch, pairs_per_row, 2) float32, the
    summed log-probabilities of each pair's chosen and rejected response."""

    def __init__(self, sides: list[tuple[np.ndarray, np.ndarray, np.ndarray]], max_seq_length: int, pairs_per_row: int,
                 pad_id: int, num_truncated: int):
        self.sides = sides  # per pair: (prompt, chosen response, rejected response) token ids, <eos> included
        self.max_seq_length, self.pairs_per_row, self.pad_id = max_seq_length, pairs_per_row, pad_id
        self.num_truncated = num_truncated
        self.pad_lengths = None
        self.ref_logps: np.ndarray | None = None  # (rows, pairs_per_row, 2)
        self.rows: list[list[int]] = []
        used = max_seq_length + 1
        for i, (prompt, chosen, rejected) in enumerate(sides):
            size = 2 * len(prompt) + len(chosen) + len(rejected)
            if used + size > max_seq_length + 1 or len(self.rows[-1]) == pairs_per_row:
                self.rows.append([])
                used = 0
            self.rows[-1].append(i)
            used += size

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_pairs(self) -> int:
        return len(self.sides)

    def batch(self, indices: np.ndarray, epoch: int, length: int) -> dict[str, np.ndarray]:
        """Rows `indices` (batch,); index -1 gives a blank row of weight 0."""
        n, p = len(indices), self.pairs_per_row
        ids = np.full((n, length + 1), self.pad_id, np.int32)
        segments = np.zeros((n, length + 1), np.int32)
        response = np.zeros((n, length + 1), bool)
        pair_weight = np.zeros((n, p), np.float32)
        for row, r in enumerate(np.asarray(indices).tolist()):
            at = 0
            for k, i in enumerate(self.rows[r] if r >= 0 else ()):
                prompt, *answers = self.sides[i]
                for side, answer in enumerate(answers):
                    seq = np.concatenate([prompt, answer])
                    ids[row, at:at + len(seq)] = seq
                    segments[row, at:at + len(seq)] = 2 * k + side + 1
                    response[row, at + len(prompt):at + len(seq)] = True
                    at += len(seq)
                pair_weight[row, k] = 1.0
        out = {
            "input_ids": ids[:, :-1],
            "attention_mask": (segments[:, :-1] > 0).astype(np.int32),
            "segment_ids": segments[:, :-1],
            "targets": ids[:, 1:],
            # the next token is a response token of the same sequence (a segment's first token is its prompt's)
            "target_weights": (response[:, 1:] & (segments[:, 1:] == segments[:, :-1])).astype(np.float32),
            "pair_weight": pair_weight,
        }
        if self.ref_logps is not None:
            valid = np.asarray(indices) >= 0
            out["ref_logps"] = np.where(valid[:, None, None], self.ref_logps[np.where(valid, indices, 0)],
                                        0).astype(np.float32)
        return out


def decoder_pair_examples(source, *, tokenizer, text_fields: Sequence[str], max_seq_length: int,
                          pairs_per_row: int) -> DecoderPairs:
    """The pairs of a source with `chosen` and `rejected` (and `prompt`) fields, for a decoder. `text_fields`:
    ('prompt', 'chosen'), or ('chosen',) for pairs of whole texts (their prompt is the end-of-text token, as GPT-2
    starts an unconditional text). A pair too long for a row has both responses cut to fit (the prompt is kept); a
    pair whose prompt leaves no room, or whose two sides are the same tokens, is refused, naming it."""
    from jaxlm.data.causal_lm import require_eos

    require_eos(tokenizer)
    fields = pair_fields(source, text_fields, "preference fine-tuning reads ('prompt', 'chosen'), or ('chosen',) "
                                              "for whole texts")
    eos = np.asarray([tokenizer.eos_id], np.int32)
    sides, truncated = [], 0
    for k, record in enumerate(records.iter_records(source)):
        texts = [records.as_text(records.field(record, f)) for f in ("prompt", "chosen", "rejected") if f in fields
                 or f == "rejected"]
        encoded = tokenizer.encode(texts)
        prompt = encoded[0].astype(np.int32) if "prompt" in fields and len(encoded[0]) else eos
        chosen, rejected = (np.concatenate([e, eos]).astype(np.int32) for e in encoded[-2:])
        room = max_seq_length + 1 - 2 * len(prompt)  # for both responses, in a row of its own
        if room < 2:
            raise ValueError(f"example {k}: its prompt is {len(prompt)} tokens, which leaves no room for two "
                             f"responses in data.max_seq_length={max_seq_length}")
        if len(chosen) + len(rejected) > room:
            truncated += 1
            keep = min(len(chosen), max(room // 2, room - len(rejected)))  # the sides as even as they can be
            chosen, rejected = chosen[:keep], rejected[:room - keep]
        if np.array_equal(chosen, rejected):
            raise ValueError(f"example {k}: chosen and rejected are the same tokens (after truncation to "
                             f"data.max_seq_length={max_seq_length}); a pair needs two different responses")
        sides.append((prompt, chosen, rejected))
    if not sides:
        raise ValueError("the split has no preference pairs")
    return DecoderPairs(sides, max_seq_length, pairs_per_row, tokenizer.pad_id, truncated)
