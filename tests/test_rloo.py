"""On-policy RL from a reward model (task 'rloo'): the advantages and the clipped loss against their formulas written
out in numpy (TRL's RLOO), and one run through the trainer of a tiny decoder against a tiny planted reward model:
it starts at KL 0, writes samples, evaluates by generating, resumes bitwise, and refuses a workdir that is no
reward model and a reference of another vocabulary in one line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import checkpoint, cli, train
from jaxlm import config as jaxlm_config
from jaxlm.tasks import rloo
from minilm import minilm_dir
from tiny import set_fields


def test_advantages_are_leave_one_out_or_group_normalised():
    r = np.array([1.0, 2.0, 4.0, -1.0, 0.0, 1.0], np.float32)  # two prompts, three completions each
    loo = np.asarray(rloo.advantages(jnp.asarray(r), 3, "rloo"))
    np.testing.assert_allclose(loo, [1 - 3, 2 - 2.5, 4 - 1.5, -1 - 0.5, 0 - 0, 1 + 0.5], rtol=1e-6)
    grpo = np.asarray(rloo.advantages(jnp.asarray(r), 3, "grpo"))
    g = r.reshape(2, 3)
    np.testing.assert_allclose(grpo, ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4))
                               .reshape(-1), rtol=1e-5)


def test_the_clipped_loss_is_trls_and_raises_the_better_completion():
    rng = np.random.default_rng(0)
    rows, prompt, t, vocab = 4, 3, 5, 11
    config = jaxlm_config.base()
    config.task.update(name="rloo", reward_model="unused", temperature=0.7, epsilon=0.2, max_new_tokens=t)
    config.data.max_seq_length = 16
    task = rloo.RLOO(config)
    logits = rng.normal(0, 2, (rows, prompt + t, vocab)).astype(np.float32)
    completion = rng.integers(0, vocab, (rows, t)).astype(np.int32)
    mask = np.array([[1] * 5, [1] * 3 + [0] * 2, [1] * 5, [0] * 5], np.float32)  # the last row: padding
    logp = jax.nn.log_softmax(logits[:, prompt - 1:-1] / 0.7, -1)
    token = np.take_along_axis(np.asarray(logp), completion[..., None], -1)[..., 0]
    seq = (token * mask).sum(1)
    old = seq + np.array([0.0, 0.5, -0.5, 0.0], np.float32)  # rho = 1, e^-.5 (clipped low), e^.5 (clipped high)
    batch = {"completion": completion, "completion_mask": mask, "old_logps": old,
             "advantages": np.array([1.0, -2.0, 0.5, 3.0], np.float32), "weight": np.array([1, 1, 1, 0], np.float32)}
    losses, counts, sums = jax.jit(task.loss)({"logits": logits}, batch)

    rho = np.exp(seq - old)
    a = batch["advantages"]
    trl = -np.minimum(rho * a, np.clip(rho, 0.8, 1.2) * a)  # RLOOTrainer's per-sequence loss
    assert float(losses["rl"]) / float(counts["rl"]) == pytest.approx(trl[:3].mean(), rel=1e-5)
    assert float(sums["clipped"]) == 2  # row 1: rho < 0.8 with A < 0; row 2: rho > 1.2 with A > 0
    assert float(sums["completion_tokens"]) == 13
    p = np.exp(np.asarray(logp))
    entropy = -(p * np.asarray(logp)).sum(-1)
    assert float(sums["entropy"]) == pytest.approx((entropy * mask).sum(), rel=1e-5)

    # one gradient step on the logits raises the log-probability of the completion with the positive advantage
    grad = jax.grad(lambda x: task.loss({"logits": x}, batch)[0]["rl"])(logits)
    onehot = np.zeros_like(logits)
    for i in range(t):
        onehot[0, prompt - 1 + i, completion[0, i]] = mask[0, i]
    assert float(np.sum(np.asarray(grad) * onehot)) < 0


@pytest.fixture(scope="module")
def reward_workdir(data_env, decoder, tmp_path_factory):
    """A tiny BERT reward model preferring 'yes' answers to 'no', 30 steps."""
    root = tmp_path_factory.mktemp("rloo_reward")
    rows = [{"chosen": f"Is {i} a number? yes, {i} is a number.", "rejected": f"Is {i} a number? no."}
            for i in range(96)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = set_fields(jaxlm_config.load("experiments/sentiment.py:reward"), {
        "model.init_from": "none", "model.preset": "bert-L2-H128", "model.max_position_embeddings": 64,
        "data.tokenizer": str(data_env / "tok"), "data.dataset": "local_preferences", "data.path": str(root),
        "data.max_seq_length": 32, "data.eval_split": "", "data.test_split": "", "data.batch_size": 16,
        "optim.learning_rate": 1e-3, "optim.warmup_steps": 2, "train.num_steps": 30, "train.log_every": 30,
        "train.checkpoint_every": 30})
    train.train_and_evaluate(c, root / "w")
    return root / "w"


def _rloo_config(decoder, reward, **fields):
    return set_fields(jaxlm_config.load("experiments/gpt_cpu.py:pretrain"), {
        "task.name": "rloo", "model.init_from": f"jaxlm:{decoder / 'pretrain'}", "data.tokenizer": "init",
        "task.reward_model": str(reward), "data.dataset": "local_preferences", "data.path": str(decoder),
        "data.text_fields": ("prompt",), "data.max_seq_length": 24, "task.prompt_tokens": 8,
        "task.max_new_tokens": 12, "task.num_generations": 4, "data.batch_size": 4, "data.eval_batch_size": 8,
        "data.eval_split": "validation[:8]", "optim.learning_rate": 1e-3, "optim.warmup_steps": 1,
        "train.num_steps": 4, "train.log_every": 1, "train.eval_every": 4, "train.checkpoint_every": 2,
        "mesh.data": 2, **fields})


def test_rloo_runs_in_the_trainer_resumes_bitwise_and_refuses_bad_models(decoder, reward_workdir, tmp_path, capsys):
    result = train.train_and_evaluate(_rloo_config(decoder, reward_workdir), tmp_path / "straight")
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]
    assert first["kl"] == pytest.approx(0, abs=1e-5)  # the policy starts as its reference
    assert first["clip_ratio/region_mean"] == 0 and first["rollouts"] == 16  # 4 prompts x 4 completions
    assert first["reward"] == pytest.approx(first["score"], abs=1e-5)  # no KL yet, so no penalty
    for key in ("reward", "reward_std", "score", "kl", "entropy", "loss", "completions/mean_length"):
        assert all(np.isfinite(r[key]) for r in rows if r["split"] == "train"), key
    assert 1 <= first["completions/mean_length"] <= 12
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert result["eval"]["rollouts"] == 8 and np.isfinite(result["eval"]["score"])

    samples = [json.loads(line) for line in (tmp_path / "straight" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2, 3, 4} and all(s["prompt"].startswith("Is ") for s in samples)
    assert {"completion", "score", "kl"} <= samples[0].keys()

    train.train_and_evaluate(_rloo_config(decoder, reward_workdir, **{"train.stop_after": 2}), tmp_path / "resumed")
    train.train_and_evaluate(_rloo_config(decoder, reward_workdir), tmp_path / "resumed")
    jax.tree.map(np.testing.assert_array_equal, checkpoint.restore_params(tmp_path / "straight", prefer_best=False)[1],
                 checkpoint.restore_params(tmp_path / "resumed", prefer_best=False)[1])

    base = ["finetune", "--config", "experiments/gpt_cpu.py:pretrain", "--workdir", str(tmp_path / "bad"),
            *(f"--config.{k}={v}" for k, v in {
                "task.name": "rloo", "model.init_from": f"jaxlm:{decoder / 'pretrain'}", "data.tokenizer": "init",
                "data.dataset": "local_preferences", "data.path": str(decoder), "data.text_fields": "('prompt',)",
                "data.max_seq_length": 24, "task.max_new_tokens": 12, "data.eval_split": "",
                "data.batch_size": 4, "mesh.data": 2}.items())]
    capsys.readouterr()
    not_reward = decoder / "pretrain"
    assert cli.main(base + [f"--config.task.reward_model={not_reward}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"config.task.reward_model={not_reward}: holds task 'causal_lm'" in err[0], err
    bert = f"hf:{minilm_dir()}"
    assert cli.main(base + [f"--config.task.reward_model={reward_workdir}", f"--config.task.reference={bert}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"config.task.reference={bert}: " in err[0] and "vocab" in err[0], err
