"""On-policy RL from a reward model, without a critic: RLOO, or GRPO-style group-normalised advantages.

A step (`RLOO.train_step`) is a host function of jitted, sharded parts:

    1. rollout    each of the batch's B prompts continued k = task.num_generations times by the policy
                  (`jaxlm.generate`, KV cache; task.temperature, task.top_k; up to task.max_new_tokens tokens),
                  the key fold_in(fold_in(rng, step), 1): a resumed run draws what the uninterrupted one drew
    2. score      prompt + completion as text, scored by the reward model (task.reward_model, a 'reward' workdir;
                  a BERT with its own tokenizer), normalised by its reward_normalization.json to mean 0, std 1
    3. shape      per completion token the policy's log-probability (old) and the frozen reference's (ref), both
                  of logits / temperature; TRL's RLOO reward R = score - beta sum_t (old_t - ref_t), and
                  advantages within each prompt's k completions:
                      rloo  A_i = R_i - mean_{j != i} R_j            (leave-one-out baseline)
                      grpo  A_i = (R_i - mean_j R_j) / (std_j R_j + 1e-4)
    4. update     `jaxlm.steps`' train step with this task's loss, per completion i with its summed
                  log-probability l_i: rho_i = exp(l_i - old_i), loss = -mean_i min(rho_i A_i, clip(rho_i, 1 - eps,
                  1 + eps) A_i), eps = task.epsilon (one update per rollout, TRL's num_iterations=1: rho = 1, its
                  gradient the policy gradient's; clip_ratio then stays 0)

Why a host function and not one jitted step: the reward model reads text through its own vocabulary (WordPiece or
SentencePiece), the policy writes byte-level BPE; detokenise -> tokenise is host work. A shared vocabulary would
tie every policy to its reward model's tokenizer. The host only moves ids and texts between the jitted parts.

Metrics, TRL's RLOO names: reward (R, after the KL penalty) and reward_std, score (the reward model's, normalised),
kl (per completion token), entropy (per completion token, of the sampling distribution), clip_ratio/region_mean,
completions/mean_length and completions/clipped_ratio (completions that reached max_new_tokens without an end).
Evaluation (`eval_step`): one completion per prompt at task.temperature from a fixed key, its score, kl and length.
Samples (prompt, completion, score) of the last rollout are the trainer's at every log line (samples.jsonl).

The reward model and the reference run in this process (`jaxlm.load`): on-policy RL runs on one host.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import monitor, sharding, steps, storage
from jaxlm.models import gpt
from jaxlm.tasks.reference import frozen_decoder
from jaxlm.tasks.task import Task

ADVANTAGES = ("rloo", "grpo")


def completion_logps(logits, tokens, temperature: float):
    """(log-probabilities, entropies), both (rows, T) float32: of each completion token under softmax(logits /
    temperature), from the logits (rows, P + T, vocab) of prompt + completion (the last T positions predicted by
    the T before them)."""
    t = tokens.shape[-1]
    logits = logits[:, -t - 1:-1].astype(jnp.float32) / max(temperature, 1e-6)
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0], entropy


def advantages(rewards, group: int, kind: str):
    """(rows,) advantages of rewards (rows,) laid out prompt by prompt, `group` completions each."""
    r = rewards.reshape(-1, group)
    if kind == "rloo":
        baseline = (r.sum(1, keepdims=True) - r) / max(group - 1, 1)
        a = r - baseline if group > 1 else jnp.zeros_like(r)
    else:
        a = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4) if group > 1 else r * 0
    return a.reshape(-1)


class RLOO(Task):
    """A decoder fine-tuned on its own samples against a reward model, a KL penalty to its frozen reference."""

    name = "rloo"
    pretrained_parts = ("gpt",)

    def __init__(self, config):
        super().__init__(config)
        t, d = config.task, config.data
        if t.advantage not in ADVANTAGES:
            raise ValueError(f"config.task.advantage={t.advantage!r}: expected one of {', '.join(ADVANTAGES)}")
        if t.num_generations < 2:
            raise ValueError(f"config.task.num_generations={t.num_generations}: expected >= 2 (the baseline of a "
                             "completion is its siblings')")
        if not t.reward_model:
            raise ValueError("config.task.reward_model: task 'rloo' needs a reward model, the workdir of a 'reward' "
                             "run")
        if t.beta < 0 or t.epsilon <= 0 or t.temperature <= 0:
            raise ValueError(f"config.task.beta={t.beta}, epsilon={t.epsilon}, temperature={t.temperature}: expected "
                             "beta >= 0, epsilon > 0 and temperature > 0")
        if t.prompt_tokens < 1 or t.max_new_tokens < 1 or t.prompt_tokens + t.max_new_tokens > d.max_seq_length:
            raise ValueError(f"config.task.prompt_tokens={t.prompt_tokens} + max_new_tokens={t.max_new_tokens}: "
                             f"expected both >= 1 and at most data.max_seq_length={d.max_seq_length} together")
        self._samples: list[dict] = []
        self._frozen: _Frozen | None = None

    def model(self, model_config, label_names):
        # no dropout, as TRL's disable_dropout: the log-probabilities of the update are those the rollout sampled
        return gpt.GPTLMHeadModel(model_config.replace(hidden_dropout=0.0, attention_dropout=0.0))

    def examples(self, tokenizer, split: str):
        from jaxlm.data.causal_lm import prompt_examples

        self.tokenizer = tokenizer
        return prompt_examples(self.source(split), text_field=self.config.data.text_fields[0], tokenizer=tokenizer,
                               prompt_tokens=self.config.task.prompt_tokens)

    def batch_spec(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
        p = self.config.task.prompt_tokens
        return {"input_ids": ((batch_size, p), "int32"), "attention_mask": ((batch_size, p), "int32"),
                "prompt_weight": ((batch_size,), "float32")}

    def flops_per_example(self, model_config, length: int) -> float:
        """k completions of a prompt: their forward-backward, and about as much again in the rollout (generation,
        the policy's and the reference's forwards)."""
        t = self.config.task
        return 2 * t.num_generations * monitor.train_flops_per_example(
            model_config, t.prompt_tokens + t.max_new_tokens, None)

    # ------------------------------------------------------------------ the update's loss

    def loss(self, outputs: dict, batch: dict) -> tuple[dict, dict, dict]:
        """(loss sums, denominators, metric sums) over a rollout's completions (padding rows have weight 0)."""
        t = self.config.task
        mask = batch["completion_mask"]
        logp, entropy = completion_logps(outputs["logits"], batch["completion"], t.temperature)
        seq = jnp.sum(logp * mask, -1)
        rho = jnp.exp(seq - batch["old_logps"])
        a, w = batch["advantages"], batch["weight"]
        per_row = -jnp.minimum(rho * a, jnp.clip(rho, 1 - t.epsilon, 1 + t.epsilon) * a)
        clipped = ((rho < 1 - t.epsilon) & (a < 0)) | ((rho > 1 + t.epsilon) & (a > 0))
        metrics = {"entropy": jnp.sum(entropy * mask * w[:, None]), "completion_tokens": jnp.sum(mask * w[:, None]),
                   "clipped": jnp.sum(clipped * w)}
        return {"rl": jnp.sum(per_row * w)}, {"rl": jnp.sum(w)}, metrics

    def summarize(self, sums: dict) -> dict[str, float]:
        s = {k: float(np.asarray(v, np.float64)) for k, v in sums.items() if np.ndim(v) == 0}
        rows = s.get("rollouts", 0.0)
        if not rows:
            return {}
        tokens = max(s["completion_tokens"], 1.0)
        mean = lambda k: s[k] / rows  # noqa: E731
        out = {"score": mean("score"), "kl": s["kl"] / tokens,
               "completions/mean_length": s["completion_tokens"] / rows,
               "completions/clipped_ratio": mean("unfinished"), "rollouts": rows}
        if "reward" in s:  # training: the shaped reward, the update's loss and statistics
            out.update(reward=mean("reward"), reward_std=float(np.sqrt(max(mean("reward2") - mean("reward") ** 2, 0))),
                       loss=s["rl_loss_sum"] / max(s["rl_count"], 1.0), entropy=s["entropy"] / tokens,
                       **{"clip_ratio/region_mean": s["clipped"] / rows})
        return out

    # ------------------------------------------------------------------ rollouts

    def frozen(self, model, mesh) -> "_Frozen":
        """The parts a rollout needs besides the policy, loaded once: the reward model and its normalisation, the
        reference, and the jitted forwards of both decoders."""
        if self._frozen is not None:
            return self._frozen
        from jaxlm import inference
        from jaxlm.experiment import load_config

        t = self.config.task
        where = storage.path(t.reward_model)
        kind = load_config(where).task.name if (where / "config.json").is_file() else None
        if kind != "reward":
            found = f"holds task {kind!r}" if kind else "is no jaxlm workdir (it has no config.json)"
            raise ValueError(f"config.task.reward_model={t.reward_model}: {found}; expected the workdir of a "
                             "'reward' run (jaxlm finetune --config experiments/sentiment.py:reward)")
        ref_config, ref_params = frozen_decoder(self.config, self.tokenizer.vocab_size)
        reward = inference.load(where, *(f"mesh.{axis}={n}" for axis, n in mesh.shape.items()))  # the policy's mesh
        norm_file = where / "reward_normalization.json"
        norm = json.loads(norm_file.read_text()) if norm_file.exists() else {"mean": 0.0, "std": 1.0}
        reference = self.model(ref_config, None)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        temperature = t.temperature

        def logps(m):
            def run(params, batch):
                logits = m.apply({"params": params}, batch, deterministic=True)["logits"]
                return completion_logps(logits, batch["completion"], temperature)[0] * batch["completion_mask"]
            return jax.jit(run)

        self._frozen = _Frozen(model, mesh, reward, norm, jax.device_put(ref_params, replicated), logps(model),
                               logps(reference))
        return self._frozen

    def rollout(self, params, batch: dict, key, frozen: "_Frozen", generations: int) -> tuple[dict, dict]:
        """Complete, score and measure: the update's batch (B x generations rows) and host metric sums."""
        from jaxlm import generate as gen

        t, tok, mesh = self.config.task, self.tokenizer, frozen.mesh
        ids = np.repeat(np.asarray(batch["input_ids"]), generations, 0)
        mask = np.repeat(np.asarray(batch["attention_mask"]), generations, 0)
        weight = np.repeat(np.asarray(batch["prompt_weight"]), generations, 0).astype(np.float32)
        prompt = sharding.global_batch({"input_ids": ids, "attention_mask": mask}, mesh)
        out = gen.generate(frozen.model, params, prompt["input_ids"], prompt["attention_mask"], key,
                           max_new_tokens=t.max_new_tokens, sampling=gen.Sampling(t.temperature, t.top_k),
                           eos_id=tok.eos_id)
        tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
        completion_mask = (np.arange(t.max_new_tokens)[None] < lengths[:, None]).astype(np.float32)
        ended = ((tokens == tok.eos_id) & (completion_mask > 0)).any(1)
        said = [row[:n][row[:n] != tok.eos_id] for row, n in zip(tokens, lengths)]  # the completion, no <eos>
        scores = (frozen.reward.score([tok.decode(np.concatenate([p[m > 0], c])) for p, m, c in zip(ids, mask, said)])
                  - frozen.norm["mean"]) / max(frozen.norm["std"], 1e-6)
        full = {"input_ids": np.concatenate([ids, tokens], 1),
                "attention_mask": np.concatenate([mask, completion_mask.astype(np.int32)], 1),
                "completion": tokens, "completion_mask": completion_mask}
        on_mesh = sharding.global_batch(full, mesh)
        old = np.asarray(frozen.policy_logps(params, on_mesh))
        kl = ((old - np.asarray(frozen.ref_logps(frozen.ref_params, on_mesh))) * completion_mask).sum(1)
        shaped = scores - t.beta * kl
        adv = np.asarray(advantages(jnp.asarray(shaped, jnp.float32), generations, t.advantage))
        rollout = {**full, "old_logps": old.sum(1).astype(np.float32), "advantages": adv * weight, "weight": weight}
        sums = {"rollouts": weight.sum(), "score": (scores * weight).sum(), "kl": (kl * weight).sum(),
                "unfinished": (~ended * weight).sum(), "reward": (shaped * weight).sum(),
                "reward2": (shaped ** 2 * weight).sum(), "completion_tokens": (completion_mask * weight[:, None]).sum()}
        self._samples = [{"prompt": tok.decode(ids[i][mask[i] > 0]), "completion": tok.decode(said[i]),
                          "score": float(scores[i]), "kl": float(kl[i])}
                         for i in np.flatnonzero(weight)[:t.num_samples]]
        return rollout, {k: np.float32(v) for k, v in sums.items()}

    def train_step(self, model, tx, mesh, shardings, accumulate: int):
        update = steps.jit_train_step(model, self.loss, tx, mesh, shardings, accumulate)
        generations, frozen = self.config.task.num_generations, self.frozen(model, mesh)  # a bad model fails now

        def step(state, batch, rng):
            key = jax.random.fold_in(jax.random.fold_in(rng, int(state.step)), 1)
            rollout, sums = self.rollout(state.params, batch, key, frozen, generations)
            del sums["completion_tokens"]  # the update's loss counts them
            state, metrics = update(state, sharding.global_batch(rollout, mesh), rng)
            return state, {**metrics, **sums}

        return step

    def eval_step(self, model, param_shardings, mesh):
        key = jax.random.key(self.config.train.seed + 2)  # every evaluation samples alike

        def evaluate(params, batch):
            _, sums = self.rollout(params, batch, key, self.frozen(model, mesh), 1)
            return {k: v for k, v in sums.items() if not k.startswith("reward")}

        return evaluate

    def samples(self) -> list[dict]:
        out, self._samples = self._samples, []
        return out


@dataclasses.dataclass(frozen=True)
class _Frozen:
    model: object  # the policy's module (its parameters are the train state's)
    mesh: object
    reward: object  # jaxlm.inference.Model of the reward workdir
    norm: dict
    ref_params: dict
    policy_logps: object
    ref_logps: object
