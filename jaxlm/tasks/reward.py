"""Reward models: a BERT scoring a text (or a prompt-response pair) with one number, trained on preference pairs.

The loss of a pair with rewards r_c (chosen), r_r (rejected) is Bradley-Terry's, as TRL's RewardTrainer has it,

    d = r_c - r_r - margin_scale * margin
    loss = -(1 - eps) log sigmoid(d) - eps log sigmoid(-d)          eps = task.label_smoothing

(eps = 0: TRL's -log sigmoid(r_c - r_r - margin); jaxlm's label smoothing treats each human label as wrong
with probability eps), plus TRL's reward centring, center_rewards_coefficient * mean((r_c + r_r)^2). The
pair's `margin` is the dataset's (sentiment_ratings: the log-odds of the human preference strength).

Metrics, TRL's names: accuracy (r_c > r_r), margin (mean r_c - r_r), min_reward / mean_reward / max_reward
over both sides; then std_reward, chosen_reward_mean / _std and rejected_reward_mean / _std. Where the split
carries mean human ratings: `pearson` (rewards against the ratings of both sides) and pairwise accuracy by the
size of the rating gap, accuracy_gap_0_0.5, ..._0.5_1, ..._1_2, ..._above_2 and accuracy_gap_above_0.5.

At the end of training the reward's mean and std over the first NORMALIZATION_PAIRS training pairs are saved
beside the model, in reward_normalization.json, for whoever normalises the reward (an RL fine-tune). They are the
final parameters' (with train.best_metric set, `jaxlm.load` serves the best checkpoint instead).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import metric_sums, monitor
from jaxlm.models import bert
from jaxlm.tasks.task import Task

GAP_EDGES = (0.5, 1.0, 2.0)  # the rating-gap buckets of the accuracy breakdown: [0, .5], (.5, 1], (1, 2], > 2
GAP_NAMES = ("0_0.5", "0.5_1", "1_2", "above_2")
NORMALIZATION_PAIRS = 2048


class Reward(Task):
    """A BERT reward model on (chosen, rejected) pairs: Bradley-Terry loss, TRL's metrics."""

    name = "reward"

    def model(self, model_config, label_names):
        return bert.BertRewardModel(model_config)

    def label_names(self, read_data: bool = True) -> list[str]:
        return ["reward"]

    def examples(self, tokenizer, split: str):
        from jaxlm.data.preferences import preference_examples

        d = self.config.data
        source = self.source(split)
        out = preference_examples(
            source, tokenizer=tokenizer, text_fields=d.text_fields, max_seq_length=d.max_seq_length,
            buckets=tuple(d.buckets), **self.cache(split))
        if self.config.task.margin_scale and not out.margin.any():
            raise ValueError(f"config.task.margin_scale={self.config.task.margin_scale}, but {d.dataset} split "
                             f"{split!r} has no `margin` field (or only zeros); set it to 0")
        return out

    def batch_spec(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
        length = self.config.data.max_seq_length
        spec = {key: ((batch_size, 2, length), "int32") for key in ("input_ids", "token_type_ids", "attention_mask",
                                                                   "position_ids")}
        spec.update(example_weight=((batch_size,), "float32"), margin=((batch_size,), "float32"),
                    rating=((batch_size, 2), "float32"), rated=((batch_size,), "float32"))
        return spec

    def loss(self, outputs: dict, batch: dict) -> tuple[dict, dict, dict]:
        """(loss sums, denominators, metric sums) of a batch of pairs; padding pairs have example_weight 0."""
        t = self.config.task
        r = outputs["reward"]  # (batch, 2) float32: chosen, rejected
        w = batch["example_weight"]  # (batch,)
        chosen, rejected = r[:, 0], r[:, 1]
        d = chosen - rejected - t.margin_scale * batch["margin"]
        eps = t.label_smoothing
        bt = -(1 - eps) * jax.nn.log_sigmoid(d) - eps * jax.nn.log_sigmoid(-d)
        losses, counts = {"reward": jnp.sum(bt * w)}, {"reward": jnp.sum(w)}
        if t.center_rewards_coefficient:
            losses["center"] = t.center_rewards_coefficient * jnp.sum(jnp.square(chosen + rejected) * w)
            counts["center"] = jnp.sum(w)
        valid = w[:, None] > 0
        metrics = {
            "correct": jnp.sum((chosen > rejected) * w), "gap": jnp.sum((chosen - rejected) * w),
            "chosen": jnp.sum(chosen * w), "chosen2": jnp.sum(chosen * chosen * w),
            "rejected": jnp.sum(rejected * w), "rejected2": jnp.sum(rejected * rejected * w),
            "min_reward": jnp.min(jnp.where(valid, r, jnp.inf)), "max_reward": jnp.max(jnp.where(valid, r, -jnp.inf)),
        }
        v = batch["rated"] * w  # pairs with human ratings
        y = batch["rating"]  # (batch, 2)
        both = v[:, None] * jnp.ones_like(r)
        metrics.update(rated=jnp.sum(both), rx=jnp.sum(r * both), ry=jnp.sum(y * both), rxx=jnp.sum(r * r * both),
                       ryy=jnp.sum(y * y * both), rxy=jnp.sum(r * y * both))
        gap = jnp.round(jnp.abs(y[:, 0] - y[:, 1]) * 1e4) / 1e4  # a gap of exactly 0.5 in the files is 0.5 here
        bucket = jnp.searchsorted(jnp.asarray(GAP_EDGES), gap)  # side='left': (.5, 1] is bucket 1
        in_bucket = (bucket[:, None] == jnp.arange(len(GAP_NAMES))[None, :]) * v[:, None]  # (batch, buckets)
        metrics.update(gap_pairs=jnp.sum(in_bucket, 0),
                       gap_correct=jnp.sum(in_bucket * (chosen > rejected)[:, None], 0))
        return losses, counts, metrics

    def summarize(self, sums: dict) -> dict[str, float]:
        n = float(sums["reward_count"])
        if not n:
            return {}
        s = {k: np.asarray(v, np.float64) for k, v in sums.items()}
        mc, mr = float(s["chosen"]) / n, float(s["rejected"]) / n
        vc, vr = float(s["chosen2"]) / n - mc * mc, float(s["rejected2"]) / n - mr * mr
        mean = (mc + mr) / 2
        out = {"loss": float(s["reward_loss_sum"]) / n, "accuracy": float(s["correct"]) / n,
               "margin": float(s["gap"]) / n, "min_reward": float(s["min_reward"]), "mean_reward": mean,
               "max_reward": float(s["max_reward"]),
               "std_reward": float(np.sqrt(max((vc + vr) / 2 + (mc - mean) ** 2, 0.0))),
               "chosen_reward_mean": mc, "chosen_reward_std": float(np.sqrt(max(vc, 0.0))),
               "rejected_reward_mean": mr, "rejected_reward_std": float(np.sqrt(max(vr, 0.0)))}
        if "center_loss_sum" in s:  # the objective, as TRL logs it: Bradley-Terry + centring
            out["center_loss"] = float(s["center_loss_sum"]) / float(s["center_count"])
            out["bt_loss"], out["loss"] = out["loss"], out["loss"] + out["center_loss"]
        m = float(s["rated"])
        if m:
            out["pearson"] = metric_sums.pearson(m, *(float(s[k]) for k in ("rx", "ry", "rxx", "ryy", "rxy")))
            pairs, correct = s["gap_pairs"], s["gap_correct"]
            for name, p, c in zip(GAP_NAMES, pairs, correct):
                if p:
                    out[f"accuracy_gap_{name}"] = float(c / p)
            if pairs[1:].sum():
                out["accuracy_gap_above_0.5"] = float(correct[1:].sum() / pairs[1:].sum())
        return out

    def predictions_per_example(self) -> int:
        return 0  # the reward head is on the pooled output

    def flops_per_example(self, model_config, length: int) -> float:
        return 2 * monitor.train_flops_per_example(model_config, length, 0)  # an example is a pair of texts

    def predict(self, outputs: dict):
        """(batch, 1): the reward of each text."""
        return outputs["reward"][:, None]

    def model_files(self, evaluate, train_examples) -> dict[str, dict]:
        stats = evaluate(train_examples.head(NORMALIZATION_PAIRS))
        return {"reward_normalization.json": {
            "mean": stats["mean_reward"], "std": stats["std_reward"],
            "pairs": min(len(train_examples), NORMALIZATION_PAIRS), "split": self.config.data.train_split,
            "parameters": "final"}}
