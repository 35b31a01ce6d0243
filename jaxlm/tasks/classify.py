"""Sequence classification: cross-entropy (or squared error when num_labels == 1), weighted per example.

Metric sums: a confusion matrix gives accuracy, macro-F1 and Matthews correlation; for regression,
the sums of x, y, x^2, y^2 and xy give the mean squared error and Pearson's r.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm import metric_sums
from jaxlm.models import bert
from jaxlm.tasks.task import Task


class Classify(Task):
    """A BERT with a classifier on the pooled output: one text or a pair -> a class (or a value)."""

    name = "classify"

    @property
    def regression(self) -> bool:
        return self.config.task.num_labels == 1

    def model(self, model_config, label_names):
        if not label_names:
            raise ValueError("task 'classify' needs label names (at least one output)")
        return bert.BertForSequenceClassification(model_config, len(label_names))

    def label_names(self, read_data: bool = True) -> list[str]:
        """The class names (from the train split's ClassLabel), or ['value'] for regression (num_labels 1).
        Without `read_data`, placeholders when config.task.num_labels fixes their number."""
        from jaxlm.data import sources

        c = self.config
        if self.regression:
            return ["value"]
        if c.task.num_labels and not read_data:
            return [f"LABEL_{i}" for i in range(c.task.num_labels)]
        names = sources.class_names(self.source(c.data.train_split), c.data.label_field)
        if c.task.num_labels and c.task.num_labels != len(names):
            raise ValueError(f"config.task.num_labels={c.task.num_labels}, but {c.data.dataset} has "
                             f"{len(names)} classes ({names[:5]}...)")
        return names

    def source(self, split: str):
        local = self.config.data.dataset == "local_classification"
        return super().source(split, **({"regression": self.regression} if local else {}))

    def examples(self, tokenizer, split: str):
        """The classification examples of `split` of config.data.dataset, bucketed by length if configured."""
        from jaxlm.data.classification import classification_examples

        d = self.config.data
        out = classification_examples(
            self.source(split), tokenizer=tokenizer, text_fields=list(d.text_fields), label_field=d.label_field,
            max_seq_length=d.max_seq_length, buckets=tuple(d.buckets), regression=self.regression,
            **self.cache(split),
        )
        labels = out.arrays["label"]
        unlabelled = int(np.isnan(labels).sum() if self.regression else (labels < 0).sum())
        if unlabelled:
            raise ValueError(f"{d.dataset} split {split!r}: {unlabelled} of {len(labels)} examples have no label "
                             "(e.g. GLUE's test splits); training and metrics need labels, `jaxlm predict --file` "
                             "gives predictions")
        return out

    def batch_spec(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """At the longest length (the largest bucket is max_seq_length at most)."""
        length = self.config.data.max_seq_length
        spec = {key: ((batch_size, length), "int32") for key in ("input_ids", "token_type_ids", "attention_mask",
                                                                "position_ids")}
        spec.update(label=((batch_size,), "float32" if self.regression else "int32"),
                    example_weight=((batch_size,), "float32"))
        return spec

    @staticmethod
    def loss(outputs: dict, batch: dict) -> tuple[dict, dict, dict]:
        """(loss sums, denominators, metric sums) of one batch; padding examples have example_weight 0."""
        logits = outputs["logits"]  # (batch, num_labels) float32
        w = batch["example_weight"]  # (batch,)
        if logits.shape[-1] == 1:
            pred, y = logits[:, 0], batch["label"].astype(jnp.float32)
            metrics = {"x": pred * w, "y": y * w, "xx": pred * pred * w, "yy": y * y * w, "xy": pred * y * w}
            return {"cls": jnp.sum(jnp.square(pred - y) * w)}, {"cls": jnp.sum(w)}, _sum(metrics)
        labels = jnp.maximum(batch["label"], 0)  # -1 (unlabelled) only ever comes with weight 0
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        num = logits.shape[-1]
        truth = _one_hot(labels, num) * w[:, None]  # (batch, num_labels)
        confusion = truth.T @ _one_hot(logits.argmax(-1), num)  # (true, predicted)
        return {"cls": jnp.sum(ce * w)}, {"cls": jnp.sum(w)}, {"confusion": confusion}

    def summarize(self, sums: dict) -> dict[str, float]:
        """Metric sums (over steps, devices, hosts) -> loss, accuracy, macro-F1, MCC (or MSE, Pearson)."""
        n = float(sums["cls_count"])
        if not n:
            return {}
        out = {"loss": float(sums["cls_loss_sum"]) / n}
        if "confusion" not in sums:
            out["mse"] = out["loss"]
            out["pearson"] = metric_sums.pearson(n, *(float(sums[k]) for k in ("x", "y", "xx", "yy", "xy")))
            return out
        c = np.asarray(sums["confusion"], np.float64)  # (true, predicted)
        tp, support, predicted = np.diag(c), c.sum(1), c.sum(0)
        out["accuracy"] = float(tp.sum() / n)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                       where=precision + recall > 0)
        present = support > 0
        out["macro_f1"] = float(f1[present].mean()) if present.any() else 0.0
        # Matthews correlation, multiclass (Gorodkin's R_K), from the confusion matrix.
        cov_tp = tp.sum() * n - predicted @ support
        denom = np.sqrt((n * n - predicted @ predicted) * (n * n - support @ support))
        out["mcc"] = float(cov_tp / denom) if denom > 0 else 0.0
        if c.shape[0] == 2:
            out["f1"] = float(f1[1])
        return out

    def baseline(self, train_examples, examples) -> dict[str, float]:
        """Accuracy of always predicting the train split's most frequent label (regression: none)."""
        train_labels, labels = train_examples.arrays["label"], examples.arrays["label"]
        if train_labels.dtype.kind == "f" or not len(labels):
            return {}
        majority = np.bincount(train_labels[train_labels >= 0]).argmax()
        labelled = labels[labels >= 0]
        return {"majority_accuracy": float((labelled == majority).mean()) if len(labelled) else 0.0}

    def predictions_per_example(self) -> int:
        return 0  # the classifier is on the pooled output: no per-position head

    def predict(self, outputs: dict):
        """(batch, len(label_names)): class probabilities, or the predicted value of a regression."""
        logits = outputs["logits"]
        return logits if logits.shape[-1] == 1 else jax.nn.softmax(logits, -1)


def _sum(tree: dict) -> dict:
    return {k: jnp.sum(v) for k, v in tree.items()}


def _one_hot(x, num: int):
    return (x[:, None] == jnp.arange(num)[None, :]).astype(jnp.float32)
