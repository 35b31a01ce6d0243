"""Causal language modelling: next-token cross-entropy with a weight per token, on a GPT decoder.

'causal_lm' pretrains on the packed documents of any text corpus (config.data.text_fields[0]); 'sft' fine-tunes on
prompt -> response pairs (config.data.text_fields = (prompt field, response field)) with the loss on the response
only. Both report the loss per target token, its perplexity and next-token accuracy.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.models import gpt
from jaxlm.tasks.task import Task

_KEYS = {"input_ids": "int32", "attention_mask": "int32", "segment_ids": "int32", "targets": "int32",
         "target_weights": "float32"}


class CausalLM(Task):
    """Next-token prediction on packed documents, no attention across them (`jaxlm.data.causal_lm`)."""

    name = "causal_lm"
    command = "pretrain"
    pretrained_parts = ("gpt",)

    def model(self, model_config, label_names):
        return gpt.GPTLMHeadModel(model_config)

    def examples(self, tokenizer, split: str):
        from jaxlm.data.causal_lm import causal_lm_examples

        d = self.config.data
        return causal_lm_examples(self.source(split), text_field=d.text_fields[0], tokenizer=tokenizer,
                                  max_seq_length=d.max_seq_length, **self.cache(split))

    def batch_spec(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
        return {key: ((batch_size, self.config.data.max_seq_length), dtype) for key, dtype in _KEYS.items()}

    @staticmethod
    def loss(outputs: dict, batch: dict) -> tuple[dict, dict, dict]:
        """(loss sums, denominators, metric sums): cross-entropy summed over the target tokens, their weight."""
        logits = outputs["logits"]  # (batch, length, vocab) float32
        targets, weights = batch["targets"], batch["target_weights"]  # (batch, length)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        correct = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0] >= logits.max(-1)
        return {"lm": jnp.sum(ce * weights)}, {"lm": jnp.sum(weights)}, {"lm_correct": jnp.sum(correct * weights)}

    def summarize(self, sums: dict) -> dict[str, float]:
        count = float(sums["lm_count"])
        if not count:
            return {}
        loss = float(sums["lm_loss_sum"]) / count
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                "accuracy": float(sums["lm_correct"]) / count, "tokens": count}

    def baseline(self, train_examples, examples) -> dict[str, float]:
        """Perplexity on `examples` of a unigram model: the target counts of the first 4,096 train rows, plus one
        for every token id up to the largest seen; what a decoder must beat to have learned more than token
        frequencies."""
        def targets(source, limit: int) -> np.ndarray:
            parts = [np.zeros(0, np.int64)]
            for start in range(0, min(len(source), limit), 256):
                b = source.batch(np.arange(start, min(start + 256, len(source), limit)), 0, source.max_seq_length)
                parts.append(b["targets"][b["target_weights"] > 0])
            return np.concatenate(parts)

        train, seen = targets(train_examples, 4096), targets(examples, len(examples))
        if not len(train) or not len(seen):
            return {}
        counts = np.bincount(train, minlength=int(max(train.max(), seen.max())) + 1) + 1.0
        return {"unigram_perplexity": float(np.exp(-np.log(counts[seen] / counts.sum()).mean()))}


class SFT(CausalLM):
    """Supervised fine-tuning: `prompt response <eos>` per row, the loss on the response and its end only."""

    name = "sft"
    command = "finetune"

    def examples(self, tokenizer, split: str):
        from jaxlm.data.causal_lm import sft_examples

        d = self.config.data
        if len(d.text_fields) != 2:
            raise ValueError(f"config.data.text_fields={tuple(d.text_fields)}: task 'sft' takes two, the prompt "
                             "field and the response field, e.g. ('prompt', 'chosen')")
        return sft_examples(self.source(split), prompt_field=d.text_fields[0], response_field=d.text_fields[1],
                            tokenizer=tokenizer, max_seq_length=d.max_seq_length)
