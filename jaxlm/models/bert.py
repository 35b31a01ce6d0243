"""BERT: presets by name, embeddings, BertModel, and the pretraining and classification heads.

Parameter tree (the names `jaxlm.hf` maps to and from Hugging Face's):

    bert/embeddings/{word,position,token_type}/embedding, bert/embeddings/norm/{scale,bias}
    bert/encoder/layer_{i}/...   (or bert/encoder/layers/... stacked when layers are scanned)
    bert/pooler/{kernel,bias}
    mlm_head/{transform,norm,bias}, nsp_head/{kernel,bias}       (BertForPreTraining)
    classifier/{kernel,bias}                                    (BertForSequenceClassification)

Every model returns a dict: `hidden` (batch, length, hidden), `pooled` (batch, hidden), and per head
`mlm_logits`, `nsp_logits` or `logits`; `hidden_states` (num_layers + 1, batch, length, hidden) on request.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.models import transformer
from jaxlm.models.transformer import (
    ACTIVATIONS,
    BATCH,
    EMBED,
    LENGTH,
    VOCAB,
    Encoder,
    LayerNorm,
    TransformerConfig,
    attention_mask,
    dense_init,
    zeros_init,
)

Array = jax.Array


def _miniature(layers: int, hidden: int) -> dict:
    return dict(num_layers=layers, hidden_size=hidden, num_heads=hidden // 64, intermediate_size=4 * hidden)


# The 24 Google BERT miniatures (bert-L{layers}-H{hidden}), their common names, bert-base and bert-large.
PRESETS: dict[str, dict] = {
    f"bert-L{l}-H{h}": _miniature(l, h) for l in (2, 4, 6, 8, 10, 12) for h in (128, 256, 512, 768)
}
PRESETS.update(
    {
        "bert-tiny": _miniature(2, 128),
        "bert-mini": _miniature(4, 256),
        "bert-small": _miniature(4, 512),
        "bert-medium": _miniature(8, 512),
        "bert-base": _miniature(12, 768),
        "bert-large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
    }
)


def preset(name: str, **overrides) -> TransformerConfig:
    """The config of a BERT preset by name, with field overrides (e.g. vocab_size=8000, dtype=jnp.bfloat16)."""
    return transformer.from_preset(PRESETS, name, overrides)


class Embeddings(nn.Module):
    """Token + position + segment embeddings, LayerNorm, dropout."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        embed = lambda n, names: nn.Embed(  # noqa: E731
            n, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            embedding_init=dense_init(cfg, names),
        )
        self.word = embed(cfg.vocab_size, ("vocab", "embed"))
        self.position = embed(cfg.max_position_embeddings, ("position", "embed"))
        self.token_type = embed(cfg.type_vocab_size, ("type", "embed"))
        self.norm = LayerNorm(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def __call__(self, input_ids, token_type_ids, position_ids, *, deterministic: bool) -> Array:
        x = self.word(input_ids) + self.position(position_ids) + self.token_type(token_type_ids)
        x = self.dropout(self.norm(x), deterministic=deterministic)  # (batch, length, hidden)
        return nn.with_logical_constraint(x, (BATCH, LENGTH, EMBED))


class BertModel(nn.Module):
    """The BERT encoder: embeddings, Transformer stack, pooler (tanh dense on the first token)."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)
        self.pooler = nn.Dense(
            cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=dense_init(cfg, ("embed", "embed_out")), bias_init=zeros_init(("embed_out",)),
        )

    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask_: Array | None = None,
        position_ids: Array | None = None,
        segment_ids: Array | None = None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
    ) -> dict[str, Array]:
        """input_ids etc.: (batch, length) ints. segment_ids (packed sequences) restricts attention to
        tokens of the same segment; 0 marks padding."""
        batch, length = input_ids.shape
        transformer.check_positions(self.config, length)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask_ is None:
            attention_mask_ = jnp.ones_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(length), (batch, length))
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic=deterministic)
        mask = attention_mask(attention_mask_, segment_ids)
        hidden, per_layer = self.encoder(x, mask, deterministic=deterministic)
        pooled = jnp.tanh(self.pooler(hidden[:, 0]))  # (batch, hidden)
        out = {"hidden": hidden, "pooled": pooled}
        if output_hidden_states:
            out["hidden_states"] = jnp.concatenate([x[None], per_layer])  # (layers + 1, batch, length, hidden)
        return out


MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "position_ids", "segment_ids")  # of a batch


def _bert_inputs(batch: dict[str, Array]) -> dict[str, Array | None]:
    return dict(
        input_ids=batch["input_ids"],
        token_type_ids=batch.get("token_type_ids"),
        attention_mask_=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        segment_ids=batch.get("segment_ids"),
    )


class MlmHead(nn.Module):
    """dense + activation + LayerNorm, then the decoder tied to the word embeddings, plus a bias."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, hidden: Array, word_embeddings: nn.Embed) -> Array:
        cfg = self.config
        h = nn.Dense(
            cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=dense_init(cfg, ("embed", "embed_out")), bias_init=zeros_init(("embed_out",)),
            name="transform",
        )(hidden)
        h = LayerNorm(cfg, name="norm")(ACTIVATIONS[cfg.hidden_act](h))
        bias = self.param("bias", zeros_init(("vocab",)), (cfg.vocab_size,), cfg.param_dtype)
        logits = word_embeddings.attend(h) + bias.astype(cfg.dtype)  # (..., vocab)
        return logits.astype(jnp.float32)


class BertForPreTraining(nn.Module):
    """BERT with the MLM head (tied decoder) and the NSP head on the pooled output."""

    config: TransformerConfig

    def setup(self):
        self.bert = BertModel(self.config)
        self.mlm_head = MlmHead(self.config)
        self.nsp_head = nn.Dense(
            2, dtype=self.config.dtype, param_dtype=self.config.param_dtype,
            kernel_init=dense_init(self.config, ("embed", "labels")), bias_init=zeros_init(("labels",)),
        )

    def __call__(self, batch: dict[str, Array], *, deterministic: bool = True,
                 output_hidden_states: bool = False) -> dict[str, Array]:
        """batch: the model inputs (see `_bert_inputs`); with `masked_positions` (batch, predictions) the
        MLM logits are computed only there (gathered before the vocabulary projection)."""
        out = self.bert(**_bert_inputs(batch), deterministic=deterministic,
                        output_hidden_states=output_hidden_states)
        hidden = out["hidden"]
        if "masked_positions" in batch:
            hidden = jnp.take_along_axis(hidden, batch["masked_positions"][..., None], axis=1)  # (b, p, hidden)
        logits = self.mlm_head(hidden, self.bert.embeddings.word)
        out["mlm_logits"] = nn.with_logical_constraint(logits, (BATCH, LENGTH, VOCAB))
        out["nsp_logits"] = self.nsp_head(out["pooled"]).astype(jnp.float32)  # (batch, 2)
        return out


class BertForSequenceClassification(nn.Module):
    """BERT with dropout + a linear classifier on the pooled output; regression when num_labels == 1."""

    config: TransformerConfig
    num_labels: int

    @nn.compact
    def __call__(self, batch: dict[str, Array], *, deterministic: bool = True,
                 output_hidden_states: bool = False) -> dict[str, Array]:
        cfg = self.config
        out = BertModel(cfg, name="bert")(**_bert_inputs(batch), deterministic=deterministic,
                                          output_hidden_states=output_hidden_states)
        pooled = nn.Dropout(cfg.hidden_dropout)(out["pooled"], deterministic=deterministic)
        out["logits"] = nn.Dense(
            self.num_labels, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            kernel_init=dense_init(cfg, ("embed", "labels")), bias_init=zeros_init(("labels",)),
            name="classifier",
        )(pooled).astype(jnp.float32)  # (batch, num_labels)
        return out



class BertRewardModel(BertForSequenceClassification):
    """A scalar reward per text: BertForSequenceClassification with one output (its parameters and Hugging Face
    layout, as TRL and the OpenAssistant reward models have it). A batch of pairs, inputs (batch, 2, length), is
    scored in one pass of 2 x batch texts; `reward` is (batch, 2) for pairs, (batch,) for texts."""

    num_labels: int = 1

    def __call__(self, batch: dict[str, Array], *, deterministic: bool = True,
                 output_hidden_states: bool = False) -> dict[str, Array]:
        shape = batch["input_ids"].shape  # (batch, length) or (batch, 2, length)
        inputs = {k: batch[k].reshape(-1, shape[-1]) for k in MODEL_INPUTS if k in batch}
        out = super().__call__(inputs, deterministic=deterministic, output_hidden_states=output_hidden_states)
        out["reward"] = out["logits"][:, 0].reshape(shape[:-1])
        return out
