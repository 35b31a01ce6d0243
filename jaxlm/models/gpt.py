"""A GPT-2-style causal decoder from jaxlm's Transformer modules: learned positions, pre-LayerNorm blocks, a final
LayerNorm and an LM head tied to the word embeddings.

Parameter tree (the names `jaxlm.hf` maps to and from Hugging Face's `GPT2LMHeadModel`):

    gpt/embeddings/{word,position}/embedding
    gpt/decoder/layer_{i}/...   (or gpt/decoder/layers/... stacked when layers are scanned)
    gpt/decoder/final_norm/{scale,bias}

`GPTLMHeadModel` returns a dict: `hidden` (batch, length, hidden) after the final LayerNorm and `logits` (batch,
length, vocab) in float32 (`logits='last'`: of the last position only, (batch, 1, vocab), as a prefill needs);
`hidden_states` (num_layers + 1, batch, length, hidden) on request. With `decoding` it reads and writes the
"cache" collection (`jaxlm.models.transformer.Decoding`; `jaxlm.generate` drives it).
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models import transformer
from jaxlm.models.transformer import (
    BATCH,
    EMBED,
    LENGTH,
    VOCAB,
    Decoding,
    Encoder,
    TransformerConfig,
    attention_mask,
    dense_init,
)

Array = jax.Array

# What every GPT-2 shares (its 50,257-token byte-level BPE, 1,024 positions, tanh GELU, LayerNorm eps 1e-5);
# token types it has none of.
_GPT2 = dict(vocab_size=50257, max_position_embeddings=1024, type_vocab_size=0, hidden_act="gelu_new",
             layer_norm_eps=1e-5, pre_layer_norm=True)


def _shape(layers: int, hidden: int) -> dict:
    return dict(_GPT2, num_layers=layers, hidden_size=hidden, num_heads=hidden // 64, intermediate_size=4 * hidden)


# From tiny (tests, a CPU in minutes) to GPT-2 small (124M parameters) and medium (355M).
PRESETS: dict[str, dict] = {
    "gpt-tiny": _shape(2, 128),
    "gpt-mini": _shape(4, 256),
    "gpt-small": _shape(6, 512),
    "gpt2": _shape(12, 768),
    "gpt2-medium": _shape(24, 1024),
    "gpt2-large": _shape(36, 1280),
}


def preset(name: str, **overrides) -> TransformerConfig:
    """The config of a GPT preset by name, with field overrides."""
    return transformer.from_preset(PRESETS, name, overrides)


def positions(mask: Array, segment_ids: Array | None = None) -> Array:
    """Position ids (batch, length) from the padding mask: the count of real tokens before each one, so that a
    left-padded prompt's first token is at 0 (transformers' `generate` does the same); with packed segment ids, the
    count within the token's own segment. Padding gets 0."""
    mask = mask.astype(jnp.int32)
    if segment_ids is not None:
        index = jnp.arange(mask.shape[1])
        starts = jnp.where(jnp.diff(segment_ids, prepend=-1, axis=1) != 0, index, 0)
        first = jax.lax.cummax(starts, axis=1)  # where each token's segment begins
        before = jnp.cumsum(mask, axis=1) - mask
        return jnp.where(mask > 0, before - jnp.take_along_axis(before, first, axis=1), 0)
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)


class Embeddings(nn.Module):
    """Token + position embeddings, dropout (no LayerNorm: the pre-LN blocks normalise their inputs)."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        embed = lambda n, names: nn.Embed(  # noqa: E731
            n, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype, embedding_init=dense_init(cfg, names))
        self.word = embed(cfg.vocab_size, ("vocab", "embed"))
        self.position = embed(cfg.max_position_embeddings, ("position", "embed"))
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def __call__(self, input_ids, position_ids, *, deterministic: bool) -> Array:
        x = self.dropout(self.word(input_ids) + self.position(position_ids), deterministic=deterministic)
        return nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))  # (batch, length, hidden)


class GPTModel(nn.Module):
    """Embeddings and the causal Transformer stack, with its final LayerNorm."""

    config: TransformerConfig

    def setup(self):
        if not self.config.pre_layer_norm:
            raise ValueError("a GPT decoder is pre-LN: model.pre_layer_norm must be True")
        self.embeddings = Embeddings(self.config)
        self.decoder = Encoder(self.config, causal=True)

    def __call__(self, batch: dict[str, Array], *, deterministic: bool = True, decoding: Decoding | None = None,
                 output_hidden_states: bool = False) -> dict[str, Array]:
        """batch: input_ids (batch, length); attention_mask (default: all ones; over the whole cache in a decoding
        step); position_ids (default: `positions` of the mask); segment_ids for packed documents."""
        cfg, ids = self.config, batch["input_ids"]
        if decoding is None:  # (a decoding step's positions are checked by `jaxlm.generate`)
            transformer.check_positions(cfg, ids.shape[1])
        mask = batch.get("attention_mask")
        mask = jnp.ones_like(ids) if mask is None else mask
        segment_ids = batch.get("segment_ids")
        position_ids = batch.get("position_ids")
        if position_ids is None:
            if decoding is not None and decoding.step:
                raise ValueError("a decoding step needs the position_ids of its tokens")
            position_ids = positions(mask, segment_ids)
        x = self.embeddings(ids, position_ids, deterministic=deterministic)
        hidden, per_layer = self.decoder(x, attention_mask(mask, segment_ids), deterministic=deterministic,
                                         decoding=decoding)
        out = {"hidden": hidden}
        if output_hidden_states:
            out["hidden_states"] = jnp.concatenate([x[None], per_layer])  # (layers + 1, batch, length, hidden)
        return out


class GPTLMHeadModel(nn.Module):
    """The decoder with its language-model head: logits = hidden @ word_embeddings^T (tied, no bias)."""

    config: TransformerConfig

    def setup(self):
        self.gpt = GPTModel(self.config)

    def __call__(self, batch: dict[str, Array], *, deterministic: bool = True, decoding: Decoding | None = None,
                 logits: Literal["all", "last"] = "all", output_hidden_states: bool = False) -> dict[str, Array]:
        out = self.gpt(batch, deterministic=deterministic, decoding=decoding,
                       output_hidden_states=output_hidden_states)
        hidden = out["hidden"] if logits == "all" else out["hidden"][:, -1:]
        out["logits"] = nn.with_logical_constraint(
            self.gpt.embeddings.word.attend(hidden).astype(jnp.float32), (BATCH, LENGTH, VOCAB))
        return out
