"""Text generation from a causal decoder with a key/value cache: the prompt in one prefill, then one token per step
inside one `lax.while_loop` (no retrace per length), greedy or sampled (temperature, top-k, top-p), each row stopped
at its end-of-text token.

    generate(model, params, input_ids, attention_mask, key, max_new_tokens=..., sampling=Sampling(...), eos_id=...)

Prompts of different lengths come left-padded (`left_pad`), so that every row's next token is written at the same
cache slot; position ids count each row's real tokens, as transformers' `generate` does. Step i samples with
`fold_in(key, i)`: the same key and prompts give the same text.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.models.transformer import Decoding

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a next token is chosen from its logits: `temperature` 0 is greedy (argmax); else a draw from
    softmax(logits / temperature) restricted to the `top_k` most likely tokens (0: all) and to the smallest set
    whose probability reaches `top_p` (1: all)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: expected >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: expected >= 0 (0 keeps every token)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: expected a probability in (0, 1]")


def sample(logits: Array, key: Array, sampling: Sampling) -> Array:
    """(batch, vocab) float logits -> (batch,) int32 tokens."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    lowest = jnp.finfo(jnp.float32).min
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, lowest, logits)
    if sampling.top_p < 1:
        order = jnp.argsort(-logits, axis=-1)
        ranked = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(ranked, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability of the more likely tokens
        ranked = jnp.where(before < sampling.top_p, ranked, lowest)  # (the most likely token is always kept)
        logits = jnp.put_along_axis(logits, order, ranked, axis=-1, inplace=False)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (input_ids, attention_mask), both (batch, length) int32, each row right-aligned."""
    length = max(map(len, prompts)) if length is None else length
    ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, -len(prompt):] = prompt
            mask[row, -len(prompt):] = 1
    return ids, mask


def check_lengths(prompt_length: int, max_new_tokens: int, max_positions: int) -> None:
    """A clear error unless a prompt of `prompt_length` tokens and `max_new_tokens` fit the model's positions."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected at least 1")
    if prompt_length >= max_positions:
        raise ValueError(f"a prompt of {prompt_length} tokens leaves no room for a new token in the model's "
                         f"max_position_embeddings={max_positions}: shorten the prompt")
    if prompt_length + max_new_tokens > max_positions:
        raise ValueError(
            f"a prompt of {prompt_length} tokens and max_new_tokens={max_new_tokens} make "
            f"{prompt_length + max_new_tokens} positions, more than the model's max_position_embeddings="
            f"{max_positions}: shorten the prompt or lower max_new_tokens (at most {max_positions - prompt_length} "
            "here)")


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "eos_id", "with_logits"))
def generate(model, params, input_ids: Array, attention_mask: Array, key: Array, *, max_new_tokens: int,
             sampling: Sampling = Sampling(), eos_id: int | None = None, with_logits: bool = False) -> dict:
    """Continue left-padded prompts (batch, prompt_length) by up to `max_new_tokens` tokens each.

    Returns `tokens` (batch, max_new_tokens) int32, with `eos_id` (its end of text, kept) after a row has ended,
    `lengths` (batch,) the tokens of each row up to and with its end of text; with `with_logits` also `logits`
    (batch, max_new_tokens, vocab), the float32 logits each token was drawn from (zero after a row has ended)."""
    batch, prompt_length = input_ids.shape
    check_lengths(prompt_length, max_new_tokens, model.config.max_position_embeddings)
    length = prompt_length + max_new_tokens
    out, variables = model.apply({"params": params}, {"input_ids": input_ids, "attention_mask": attention_mask},
                                 decoding=Decoding(length), logits="last", mutable=["cache"])
    logits = out["logits"][:, 0]  # (batch, vocab)
    vocab = logits.shape[-1]
    prompt_tokens = attention_mask.astype(jnp.int32).sum(1)  # (batch,) step i's token is at position this + i
    state = dict(
        step=jnp.zeros((), jnp.int32),
        token=sample(logits, jax.random.fold_in(key, 0), sampling),
        logits=logits,
        cache=variables["cache"],
        kv_mask=jnp.concatenate([attention_mask.astype(jnp.int32), jnp.zeros((batch, max_new_tokens), jnp.int32)], 1),
        done=jnp.zeros((batch,), bool),
        tokens=jnp.full((batch, max_new_tokens), 0 if eos_id is None else eos_id, jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32),
        all_logits=jnp.zeros((batch, max_new_tokens, vocab) if with_logits else (0,), jnp.float32),
    )

    def running(s):
        return (s["step"] < max_new_tokens) & ~jnp.all(s["done"])

    def step(s):
        i = s["step"]
        token = jnp.where(s["done"], s["tokens"][:, i], s["token"])
        s = {**s, "tokens": s["tokens"].at[:, i].set(token), "lengths": s["lengths"] + (~s["done"]).astype(jnp.int32)}
        if with_logits:
            s["all_logits"] = s["all_logits"].at[:, i].set(jnp.where(s["done"][:, None], 0.0, s["logits"]))
        done = s["done"] | (token == eos_id) if eos_id is not None else s["done"]
        kv_mask = s["kv_mask"].at[:, prompt_length + i].set(1)
        out, variables = model.apply(
            {"params": params, "cache": s["cache"]},
            {"input_ids": token[:, None], "attention_mask": kv_mask, "position_ids": (prompt_tokens + i)[:, None]},
            decoding=Decoding(length, step=True), mutable=["cache"])
        logits = out["logits"][:, 0]
        return {**s, "step": i + 1, "token": sample(logits, jax.random.fold_in(key, i + 1), sampling),
                "logits": logits, "cache": variables["cache"], "kv_mask": kv_mask, "done": done}

    s = jax.lax.while_loop(running, step, state)
    result = {"tokens": s["tokens"], "lengths": s["lengths"]}
    if with_logits:
        result["logits"] = s["all_logits"]
    return result
