"""BERT pretraining: MLM cross-entropy over the masked positions plus NSP cross-entropy."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.models import bert
from jaxlm.tasks.task import Task


class Pretrain(Task):
    """MLM + NSP as google-research/bert defines them (or MLM alone on packed sequences)."""

    name = "pretrain"
    command = "pretrain"
    pretrained_parts = ("bert", "mlm_head", "nsp_head")  # pretraining goes on from a checkpoint (BERT's phase 2)

    def model(self, model_config, label_names):
        return bert.BertForPreTraining(model_config)

    def examples(self, tokenizer, split: str):
        """The pretraining examples of `split` of config.data.dataset (instances cached, masks on the fly)."""
        from jaxlm.data.pretraining import PretrainingSpec, pretraining_examples

        d, t = self.config.data, self.config.task
        source = self.source(split)
        spec = PretrainingSpec(
            max_seq_length=d.max_seq_length, mlm_probability=t.mlm_probability,
            max_predictions_per_seq=t.max_predictions_per_seq, short_seq_prob=t.short_seq_prob,
            whole_word=t.whole_word, packed=t.packed, split_sentences=t.split_sentences,
        )
        return pretraining_examples(
            source, text_field=d.text_fields[0], tokenizer=tokenizer, spec=spec, seed=self.config.train.seed,
            workers=self.workers(), progress=jax.process_index() == 0, **self.cache(split),
        )

    def batch_spec(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
        length, predictions = self.config.data.max_seq_length, self.config.task.max_predictions_per_seq
        spec = {key: ((batch_size, length), "int32") for key in ("input_ids", "token_type_ids", "attention_mask",
                                                                "position_ids")}
        if self.config.task.packed:
            spec["segment_ids"] = ((batch_size, length), "int32")
        spec.update(masked_positions=((batch_size, predictions), "int32"),
                    masked_ids=((batch_size, predictions), "int32"),
                    masked_weights=((batch_size, predictions), "float32"), nsp_label=((batch_size,), "int32"),
                    nsp_weight=((batch_size,), "float32"))
        return spec

    @staticmethod
    def loss(outputs: dict, batch: dict) -> tuple[dict, dict, dict]:
        """(loss sums, their denominators, metric sums) of one batch.

        The objective is mlm_sum / masked_tokens + nsp_sum / nsp_examples, with the denominators of the
        whole (global, accumulated) batch; the sums here add up across micro-batches and devices.
        """
        logits = outputs["mlm_logits"]  # (batch, predictions, vocab) float32
        ids, weights = batch["masked_ids"], batch["masked_weights"]  # (batch, predictions)
        mlm_ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
        nsp_logits = outputs["nsp_logits"]  # (batch, 2)
        nsp_w = batch["nsp_weight"]
        nsp_ce = optax.softmax_cross_entropy_with_integer_labels(nsp_logits, batch["nsp_label"])
        sums = {"mlm": jnp.sum(mlm_ce * weights), "nsp": jnp.sum(nsp_ce * nsp_w)}
        denominators = {"mlm": jnp.sum(weights), "nsp": jnp.sum(nsp_w)}
        metrics = {
            # The label's logit is the largest (ties count as correct): shares the max that the softmax takes,
            # where an argmax would be one more pass over (batch, predictions, vocab).
            "mlm_correct": jnp.sum(
                (jnp.take_along_axis(logits, ids[..., None], -1)[..., 0] >= logits.max(-1)) * weights),
            "nsp_correct": jnp.sum((nsp_logits.argmax(-1) == batch["nsp_label"]) * nsp_w),
        }
        return sums, denominators, metrics

    def summarize(self, sums: dict) -> dict[str, float]:
        """Metric sums (over steps, devices, hosts) -> means."""
        out = {}
        for part in ("mlm", "nsp"):
            count = float(sums[f"{part}_count"])
            if count:
                out[f"{part}_loss"] = float(sums[f"{part}_loss_sum"]) / count
                out[f"{part}_accuracy"] = float(sums[f"{part}_correct"]) / count
        out["loss"] = out.get("mlm_loss", 0.0) + out.get("nsp_loss", 0.0)
        return out

    def baseline(self, train_examples, examples) -> dict[str, float]:
        """MLM accuracy of always predicting the token most often masked in (the first 4,096 examples of) the
        train split, with the masks evaluation uses (epoch 0): what a model of unigram frequencies reaches."""
        def masked(source, limit: int):
            for start in range(0, min(len(source), limit), 512):
                b = source.batch(np.arange(start, min(start + 512, len(source), limit)), 0, source.max_seq_length)
                yield b["masked_ids"].ravel(), b["masked_weights"].ravel()

        counts = collections.Counter()
        for ids, w in masked(train_examples, 4096):
            counts.update(ids[w > 0].tolist())
        if not counts:
            return {}
        top, hits, total = counts.most_common(1)[0][0], 0.0, 0.0
        for ids, w in masked(examples, len(examples)):
            hits, total = hits + float(np.sum((ids == top) * w)), total + float(np.sum(w))
        return {"unigram_mlm_accuracy": hits / total} if total else {}

    def predictions_per_example(self) -> int:
        return self.config.task.max_predictions_per_seq
