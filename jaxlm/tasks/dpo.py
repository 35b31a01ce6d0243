"""Direct preference optimisation and its family: a decoder fine-tuned on (prompt, chosen, rejected) pairs.

With the policy's summed log-probabilities of a pair's responses c, r, the frozen reference's c_ref, r_ref,
d = (c - c_ref) - (r - r_ref), b = task.beta and eps = task.label_smoothing, `task.loss_type` is TRL's:

    sigmoid        -(1 - eps) log s(b d) - eps log s(-b d)         DPO; with eps > 0 conservative DPO (cDPO)
    robust         (-(1 - eps) log s(b d) + eps log s(-b d)) / (1 - 2 eps)     robust DPO, unbiased under noise eps
    hinge          relu(1 - b d)                                    SLiC
    ipo            (d_avg - 1 / (2 b))^2                            IPO, on the log-ratios averaged per token
    sigmoid_norm   -log s(b d_avg)                                  length-normalised DPO
    simpo          -(1 - eps) log s(b (c_avg - r_avg) - gamma) - eps log s(...)   SimPO: no reference at all

(d_avg: each side's log-ratio divided by its response's tokens; c_avg, r_avg the policy's mean log-probability
per token; gamma = task.simpo_gamma, TRL's CPO trainer's `simpo_gamma`. TRL 1.16's sigmoid ignores label_smoothing,
having dropped cDPO in v0.29; benchmarks/trl_dpo.py checks the rest against TRL itself.) The reference is task.reference (or
model.init_from): its log-probabilities are computed once per split before training, on the packed rows the
policy sees, and cached on disk under a hash of the reference's parameters and the rows; a step costs one
policy forward-backward.

Metrics, TRL's names: rewards/chosen and rewards/rejected (b (c - c_ref), b (r - r_ref); SimPO's b c_avg,
b r_avg), rewards/accuracies (chosen's reward above rejected's), rewards/margins, logps/chosen and
logps/rejected (the policy's summed log-probabilities), means over pairs.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlm.tasks.causal_lm import CausalLM
from jaxlm.tasks.reference import frozen_decoder, reference_of

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ipo", "sigmoid_norm", "simpo")
SMOOTHED = ("sigmoid", "robust", "simpo")  # the losses label_smoothing applies to
REFERENCE_VERSION = 1  # bump when the cached reference log-probabilities change meaning


def sequence_logps(logits, batch: dict, pairs: int):
    """(summed log-probabilities, response tokens), both (batch, pairs, 2) float32: of each pair's chosen (0)
    and rejected (1) response, from the logits of a packed batch (`jaxlm.data.preferences.DecoderPairs`)."""
    weights = batch["target_weights"]
    token = -optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"]) * weights
    sides = (batch["segment_ids"][..., None] == jnp.arange(1, 2 * pairs + 1)).astype(jnp.float32)  # (b, l, 2p)
    shape = (*weights.shape[:-1], pairs, 2)
    return (jnp.einsum("bl,bls->bs", token, sides).reshape(shape),
            jnp.einsum("bl,bls->bs", weights, sides).reshape(shape))


class DPO(CausalLM):
    """Preference fine-tuning of a decoder: DPO, cDPO, robust DPO, IPO, SLiC-hinge, length-normalised DPO, SimPO."""

    name = "dpo"
    command = "finetune"

    def __init__(self, config):
        super().__init__(config)
        t = config.task
        if t.loss_type not in LOSS_TYPES:
            raise ValueError(f"config.task.loss_type={t.loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")
        if not t.beta > 0:
            raise ValueError(f"config.task.beta={t.beta}: expected > 0")
        if t.label_smoothing and t.loss_type not in SMOOTHED:
            raise ValueError(f"config.task.label_smoothing={t.label_smoothing}: loss_type {t.loss_type!r} has no "
                             f"label smoothing ({', '.join(SMOOTHED)} have)")
        if not 0 <= t.label_smoothing < 0.5:
            raise ValueError(f"config.task.label_smoothing={t.label_smoothing}: expected in [0, 0.5) (the "
                             "probability that a label is flipped)")
        if t.pairs_per_row < 1:
            raise ValueError(f"config.task.pairs_per_row={t.pairs_per_row}: expected >= 1")

    @property
    def reference(self) -> str | None:
        """Where the reference model comes from ('jaxlm:WORKDIR' or 'hf:DIR'); None for SimPO."""
        if self.config.task.loss_type == "simpo":
            return None
        try:
            return reference_of(self.config)
        except ValueError as e:
            raise ValueError(f"{e}; loss_type 'simpo' needs none") from None

    def examples(self, tokenizer, split: str):
        from jaxlm.data.preferences import decoder_pair_examples

        d = self.config.data
        pairs = decoder_pair_examples(self.source(split), tokenizer=tokenizer, text_fields=d.text_fields,
                                      max_seq_length=d.max_seq_length, pairs_per_row=self.config.task.pairs_per_row)
        if self.reference is not None:
            pairs.ref_logps = self.reference_logps(pairs, tokenizer.vocab_size, split)
        return pairs

    def reference_logps(self, pairs, vocab_size: int, split: str) -> np.ndarray:
        """(rows, pairs_per_row, 2) float32: the reference's summed log-probabilities of every response, from the
        cache when this reference has scored these rows before."""
        from tqdm import tqdm

        from jaxlm.data import array_cache, pipeline

        model_config, params = frozen_decoder(self.config, vocab_size)
        model, p = self.model(model_config, None), self.config.task.pairs_per_row

        def build() -> dict[str, np.ndarray]:
            score = jax.jit(lambda params, batch: sequence_logps(
                model.apply({"params": params}, batch, deterministic=True)["logits"], batch, p)[0])
            size, out = self.config.data.eval_batch_size, []
            batches = pipeline.eval_batches(pairs, size)
            for batch in tqdm(batches, total=-(-len(pairs) // size), desc=f"reference log-probabilities ({split})",
                              unit="batch", disable=len(pairs) <= size):
                real = np.asarray(batch.pop("pair_weight")).sum(1) > 0
                out.append(np.asarray(score(params, batch))[real])
            return {"ref_logps": np.concatenate(out).astype(np.float32)}

        def parts() -> dict:
            h = hashlib.sha256()
            for leaf in jax.tree.leaves(params):
                h.update(np.ascontiguousarray(leaf).tobytes())
            rows = hashlib.sha256(repr(pairs.rows).encode())
            for side in pairs.sides:
                for ids in side:
                    rows.update(ids.tobytes() + b"\0")
            return {"kind": "dpo_reference", "version": REFERENCE_VERSION, "reference": h.hexdigest()[:20],
                    "architecture": model_config.architecture(), "dtype": self.config.train.dtype,
                    "rows": rows.hexdigest()[:20], "max_seq_length": pairs.max_seq_length}

        cache_dir = self.cache(split)["cache_dir"] + "/reference"
        return np.asarray(array_cache.cached_arrays(cache_dir, parts, build)["ref_logps"])

    def batch_spec(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
        spec = super().batch_spec(batch_size)
        p = self.config.task.pairs_per_row
        spec["pair_weight"] = ((batch_size, p), "float32")
        if self.config.task.loss_type != "simpo":
            spec["ref_logps"] = ((batch_size, p, 2), "float32")
        return spec

    def loss(self, outputs: dict, batch: dict) -> tuple[dict, dict, dict]:
        """(loss sums, denominators, metric sums) over the batch's pairs (padding pairs have pair_weight 0)."""
        t = self.config.task
        logps, tokens = sequence_logps(outputs["logits"], batch, t.pairs_per_row)
        w = batch["pair_weight"]
        per_token = logps / jnp.maximum(tokens, 1.0)
        b, eps = t.beta, t.label_smoothing
        if t.loss_type == "simpo":
            delta = per_token[..., 0] - per_token[..., 1] - t.simpo_gamma / b
            rewards = b * per_token
        else:
            ratios = logps - batch["ref_logps"]  # (batch, pairs, 2)
            delta = ratios[..., 0] - ratios[..., 1]
            normalised = ratios / jnp.maximum(tokens, 1.0)
            delta_avg = normalised[..., 0] - normalised[..., 1]
            rewards = b * ratios
        if t.loss_type in ("sigmoid", "simpo"):
            losses = -(1 - eps) * jax.nn.log_sigmoid(b * delta) - eps * jax.nn.log_sigmoid(-b * delta)
        elif t.loss_type == "robust":
            losses = (-(1 - eps) * jax.nn.log_sigmoid(b * delta) + eps * jax.nn.log_sigmoid(-b * delta)) / (1 - 2 * eps)
        elif t.loss_type == "hinge":
            losses = jax.nn.relu(1 - b * delta)
        elif t.loss_type == "ipo":
            losses = jnp.square(delta_avg - 1 / (2 * b))
        else:  # sigmoid_norm
            losses = -jax.nn.log_sigmoid(b * delta_avg)
        total = lambda x: jnp.sum(x * w)  # noqa: E731
        metrics = {"rewards_chosen": total(rewards[..., 0]), "rewards_rejected": total(rewards[..., 1]),
                   "rewards_correct": total(rewards[..., 0] > rewards[..., 1]),
                   "logps_chosen": total(logps[..., 0]), "logps_rejected": total(logps[..., 1])}
        return {"dpo": total(losses)}, {"dpo": jnp.sum(w)}, metrics

    def summarize(self, sums: dict) -> dict[str, float]:
        n = float(sums["dpo_count"])
        if not n:
            return {}
        mean = {k: float(v) / n for k, v in sums.items()}
        return {"loss": mean["dpo_loss_sum"], "rewards/chosen": mean["rewards_chosen"],
                "rewards/rejected": mean["rewards_rejected"], "rewards/accuracies": mean["rewards_correct"],
                "rewards/margins": mean["rewards_chosen"] - mean["rewards_rejected"],
                "logps/chosen": mean["logps_chosen"], "logps/rejected": mean["logps_rejected"], "pairs": n}

    def baseline(self, train_examples, examples) -> dict[str, float]:
        """How often the reference itself gives the chosen response the higher log-probability (DPO's starting
        point; the policy's rewards/accuracies count the change from it)."""
        if examples.ref_logps is None:
            return {}
        real = np.zeros(examples.ref_logps.shape[:2], bool)
        for r, row in enumerate(examples.rows):
            real[r, :len(row)] = True
        ref = examples.ref_logps[real]
        return {"reference_accuracy": float(np.mean(ref[:, 0] > ref[:, 1]))}
