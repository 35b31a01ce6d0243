"""Examples for a causal language model: next-token prediction on packed documents, and prompt -> response pairs.

Pretraining (`causal_lm_examples`): every document's tokens, then its end of text, laid end to end in one stream
(built once and cached); row r is the L + 1 tokens stream[r L : r L + L + 1], its first L the inputs and its last L
the targets, so every token is a target once. The documents in a row are its segments (ids 1, 2, ...): a token
attends only within its own document, positions restart at each, and the first token of a document is no target
(nothing of its document precedes it).

Supervised fine-tuning (`sft_examples`): one pair per row, `prompt response <eos>`, right-padded; the targets are
the response and its end of text only.

Prompts for on-policy RL (`prompt_examples`): the first `prompt_tokens` tokens of each text, left-padded (as
`jaxlm.generate` continues them); a batch is input_ids, attention_mask (batch, prompt_tokens) int32 and
prompt_weight (batch,) float32 (0 on padding rows).

A batch: input_ids, attention_mask, segment_ids (batch, length) int32, targets (batch, length) int32 (the next
token), target_weights (batch, length) float32 (1 where the position's next token is a target).
"""

from __future__ import annotations

import numpy as np

from jaxlm.data import array_cache, records

FORMAT_VERSION = 1  # bump when the cached arrays change meaning


def _token_stream(texts, tokenizer, chunk: int = records.CHUNK) -> dict[str, np.ndarray]:
    """Documents -> (tokens,) int32 ids, each document followed by the end of text, and (tokens,) bool where a
    document begins. Empty documents are left out."""
    ids, starts, batch = [], [], []

    def flush():
        for encoded in tokenizer.encode(batch):
            if len(encoded):
                ids.append(np.append(encoded, tokenizer.eos_id).astype(np.int32))
                starts.append(np.arange(len(encoded) + 1) == 0)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == chunk:
            flush()
    flush()
    return {"tokens": np.concatenate([np.zeros(0, np.int32), *ids]),
            "document_starts": np.concatenate([np.zeros(0, bool), *starts])}


def require_eos(tokenizer, field: str = "config.data.tokenizer") -> None:
    if tokenizer.eos_id is None:
        raise ValueError(f"{field}: the tokenizer has no end-of-text token (a decoder needs one to end documents and "
                         "generations); GPT-2's byte-level BPE has <|endoftext|>, SentencePiece and WordPiece [SEP]")


class CausalLMExamples:
    """Random access to rows of the packed token stream; row i is the same in every epoch."""

    def __init__(self, tokens: np.ndarray, document_starts: np.ndarray, max_seq_length: int, pad_id: int):
        self.tokens, self.document_starts = tokens, document_starts
        self.max_seq_length, self.pad_id = max_seq_length, pad_id
        self.pad_lengths = None  # every row is max_seq_length long

    def __len__(self) -> int:
        return max(0, -(-(len(self.tokens) - 1) // self.max_seq_length))

    def batch(self, indices: np.ndarray, epoch: int, length: int) -> dict[str, np.ndarray]:
        """Rows `indices` (batch,); index -1 gives a blank row of weight 0."""
        assert length == self.max_seq_length, (length, self.max_seq_length)
        indices = np.asarray(indices, np.int64)
        at = np.where(indices >= 0, indices, 0)[:, None] * length + np.arange(length + 1)  # (batch, length + 1)
        valid = (at < len(self.tokens)) & (indices >= 0)[:, None]
        at = np.minimum(at, len(self.tokens) - 1)
        ids = np.where(valid, self.tokens[at], self.pad_id).astype(np.int32)
        starts = self.document_starts[at] & valid
        segments = np.where(valid, np.cumsum(starts, axis=1) - starts[:, :1] + 1, 0).astype(np.int32)
        return {
            "input_ids": ids[:, :-1],
            "attention_mask": valid[:, :-1].astype(np.int32),
            "segment_ids": segments[:, :-1],
            "targets": ids[:, 1:],
            "target_weights": (valid[:, 1:] & ~starts[:, 1:]).astype(np.float32),
        }


def causal_lm_examples(source, *, text_field: str, tokenizer, max_seq_length: int, cache_dir: str | None = None,
                       name: str | None = None) -> CausalLMExamples:
    """The packed rows of a random-access source of documents (records with a `text_field`); the token stream is
    built once per (source, tokenizer) and cached under cache_dir."""
    require_eos(tokenizer)

    def build() -> dict[str, np.ndarray]:
        texts = (records.as_text(records.field(r, text_field)) for r in records.iter_records(source))
        return _token_stream(texts, tokenizer)

    def parts() -> dict:
        return {"kind": "causal_lm", "version": FORMAT_VERSION, "source": name, "text_field": text_field,
                "fingerprint": array_cache.source_fingerprint(source, [text_field]),
                "tokenizer": array_cache.tokenizer_fingerprint(tokenizer)}

    arrays = array_cache.cached_arrays(cache_dir, parts, build)
    return CausalLMExamples(arrays["tokens"], arrays["document_starts"], max_seq_length, tokenizer.pad_id)


class SFTExamples:
    """One prompt -> response pair per row: `prompt response <eos>`, the loss on the response and <eos> only."""

    def __init__(self, prompts: list[np.ndarray], responses: list[np.ndarray], max_seq_length: int, eos_id: int,
                 pad_id: int):
        self.prompts, self.responses = prompts, responses
        self.max_seq_length, self.eos_id, self.pad_id = max_seq_length, eos_id, pad_id
        self.pad_lengths = None

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, indices: np.ndarray, epoch: int, length: int) -> dict[str, np.ndarray]:
        """Rows `indices` (batch,), cut at `length` + 1 tokens; index -1 gives a blank row of weight 0."""
        n = len(indices)
        ids = np.full((n, length + 1), self.pad_id, np.int32)
        real = np.zeros((n, length + 1), bool)
        response = np.zeros((n, length + 1), bool)
        for row, i in enumerate(np.asarray(indices).tolist()):
            if i >= 0:
                seq = np.concatenate([self.prompts[i], self.responses[i], [self.eos_id]])[: length + 1]
                ids[row, : len(seq)], real[row, : len(seq)] = seq, True
                response[row, len(self.prompts[i]): len(seq)] = True
        return {
            "input_ids": ids[:, :-1],
            "attention_mask": real[:, :-1].astype(np.int32),
            "segment_ids": real[:, :-1].astype(np.int32),
            "targets": ids[:, 1:],
            "target_weights": response[:, 1:].astype(np.float32),  # the next token is the response's
        }


def sft_examples(source, *, prompt_field: str, response_field: str, tokenizer, max_seq_length: int) -> SFTExamples:
    """Prompt -> response pairs of a random-access source; a pair whose prompt leaves no room for a response
    token is refused, naming the row."""
    require_eos(tokenizer)
    prompts, responses = [], []
    for k, record in enumerate(records.iter_records(source)):
        prompt, response = tokenizer.encode([records.as_text(records.field(record, prompt_field)),
                                             records.as_text(records.field(record, response_field))])
        if len(prompt) >= max_seq_length:
            raise ValueError(f"example {k}: its {prompt_field!r} is {len(prompt)} tokens, which leaves no room for a "
                             f"response in data.max_seq_length={max_seq_length}")
        prompts.append(prompt)
        responses.append(response)
    return SFTExamples(prompts, responses, max_seq_length, tokenizer.eos_id, tokenizer.pad_id)


class PromptExamples:
    """The opening tokens of texts, one prompt per row, left-padded to `prompt_tokens`."""

    def __init__(self, prompts: list[np.ndarray], prompt_tokens: int, pad_id: int):
        self.prompts, self.max_seq_length, self.pad_id = prompts, prompt_tokens, pad_id
        self.pad_lengths = None

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, indices: np.ndarray, epoch: int, length: int) -> dict[str, np.ndarray]:
        """Rows `indices` (batch,); index -1 gives a blank row of weight 0."""
        from jaxlm.generate import left_pad

        indices = np.asarray(indices)
        ids, mask = left_pad([self.prompts[i].tolist() if i >= 0 else [] for i in indices.tolist()], self.pad_id, length)
        return {"input_ids": ids, "attention_mask": mask, "prompt_weight": (indices >= 0).astype(np.float32)}


def prompt_examples(source, *, text_field: str, tokenizer, prompt_tokens: int) -> PromptExamples:
    """The first `prompt_tokens` tokens of every text of a random-access source; an empty text is refused, naming
    its row (a prompt of no tokens would start from nothing the data chose)."""
    require_eos(tokenizer)
    # the opening 32 characters a token suffice (no token is longer): a long review is not tokenised whole
    texts = [records.as_text(records.field(record, text_field))[:32 * prompt_tokens]
             for record in records.iter_records(source)]
    prompts = []
    for start in range(0, len(texts), records.CHUNK):
        prompts += [np.asarray(ids[:prompt_tokens], np.int32) for ids in
                    tokenizer.encode(texts[start:start + records.CHUNK])]
    for k, ids in enumerate(prompts):
        if not len(ids):
            raise ValueError(f"example {k}: its {text_field!r} is empty; a prompt needs at least one token")
    return PromptExamples(prompts, prompt_tokens, tokenizer.pad_id)
