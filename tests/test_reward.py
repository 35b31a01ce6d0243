"""Reward models: the loss and metrics against TRL's formulas (written out in torch, as TRL's RewardTrainer has
them), a short MiniLM reward model on human preference pairs, its score from `jaxlm predict`, and its Hugging Face
export (BertForSequenceClassification, num_labels=1) giving the same scores in transformers and back."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from minilm import minilm_dir

import jaxlm
from jaxlm import cli, metric_sums, train
from jaxlm import config as jaxlm_config
from jaxlm.tasks.reward import GAP_EDGES, Reward

EXAMPLES = ["This is an amazing movie!", "A dull, lifeless and tedious film.", "It is a movie.",
            "Brilliant acting and a wonderful story.", "The worst thing I have seen all year."]


def _task(**fields):
    c = jaxlm_config.load("experiments/sentiment.py:reward")
    jaxlm_config.override(c, [f"task.{k}={v}" for k, v in fields.items()])
    return Reward(c)


def _batch(seed: int, size: int = 9):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(0, 2, (size, 2)).astype(np.float32)
    batch = {"example_weight": np.array([1] * (size - 2) + [0, 0], np.float32),  # two padding pairs
             "margin": rng.uniform(0, 2, size).astype(np.float32),
             "rating": np.sort(rng.uniform(-4, 4, (size, 2)), 1)[:, ::-1].astype(np.float32).copy(),
             "rated": np.ones(size, np.float32)}
    return {"reward": jnp.asarray(rewards)}, {k: jnp.asarray(v) for k, v in batch.items()}


def _flat(task, outputs, batch):
    losses, counts, metrics = task.loss(outputs, batch)
    out = {f"{k}_loss_sum": v for k, v in losses.items()}
    out.update({f"{k}_count": v for k, v in counts.items()}, **metrics)
    return out


@pytest.mark.parametrize("smoothing, center, scale", [(0.0, 0.0, 0.0), (0.1, 0.01, 1.0)])
def test_loss_and_metrics_are_trls(smoothing, center, scale):
    task = _task(label_smoothing=smoothing, center_rewards_coefficient=center, margin_scale=scale)
    outputs, batch = _batch(0)
    real = np.asarray(batch["example_weight"]) > 0
    rc, rr = (torch.tensor(np.asarray(outputs["reward"])[real][:, i]) for i in (0, 1))
    margin = torch.tensor(np.asarray(batch["margin"])[real]) * scale
    d = rc - rr - margin
    trl = -F.logsigmoid(d).mean() + smoothing * d.mean()  # TRL's label smoothing form: the same loss, rewritten
    trl_center = center * torch.mean((rc + rr) ** 2)
    losses, counts, _ = task.loss(outputs, batch)
    objective = sum(float(losses[k]) / float(counts[k]) for k in losses)
    np.testing.assert_allclose(objective, float(trl + trl_center), rtol=1e-5)

    got = task.summarize(_flat(task, outputs, batch))
    both = torch.cat([rc, rr])
    expected = {"accuracy": (rc > rr).float().mean(), "margin": (rc - rr).mean(), "min_reward": both.min(),
                "mean_reward": both.mean(), "max_reward": both.max(), "std_reward": both.std(unbiased=False),
                "chosen_reward_mean": rc.mean(), "chosen_reward_std": rc.std(unbiased=False),
                "rejected_reward_mean": rr.mean(), "rejected_reward_std": rr.std(unbiased=False)}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], float(value), rtol=1e-5, atol=1e-6, err_msg=name)
    ratings = np.asarray(batch["rating"])[real]
    np.testing.assert_allclose(got["pearson"], np.corrcoef(both.numpy(), ratings.T.reshape(-1))[0, 1], rtol=1e-4)
    gap, correct = ratings[:, 0] - ratings[:, 1], (rc > rr).numpy()
    above = gap > GAP_EDGES[0]
    np.testing.assert_allclose(got["accuracy_gap_above_0.5"], correct[above].mean(), rtol=1e-6)
    if (gap <= GAP_EDGES[0]).any():
        np.testing.assert_allclose(got["accuracy_gap_0_0.5"], correct[~above].mean(), rtol=1e-6)


def test_metric_sums_of_two_batches_are_those_of_both():
    task = _task()
    (o1, b1), (o2, b2) = _batch(1), _batch(2)
    merged = task.summarize(metric_sums.merge(_flat(task, o1, b1), _flat(task, o2, b2)))
    both = task.summarize(_flat(task, {"reward": jnp.concatenate([o1["reward"], o2["reward"]])},
                                {k: jnp.concatenate([b1[k], b2[k]]) for k in b1}))
    assert merged.keys() == both.keys()
    for k in both:
        np.testing.assert_allclose(merged[k], both[k], rtol=1e-5, atol=1e-6, err_msg=k)
    empty = metric_sums.empty({"min_reward": jnp.zeros(()), "max_reward": jnp.zeros(()), "gap": jnp.zeros(())})
    assert float(empty["min_reward"]) == np.inf and float(empty["max_reward"]) == -np.inf and float(empty["gap"]) == 0


@pytest.fixture(scope="module")
def reward_workdir(data_env, tmp_path_factory):
    """MiniLM trained 40 steps of 16 movie-review pairs (one epoch of 640, length 32) on a data=2 mesh."""
    workdir = tmp_path_factory.mktemp("reward") / "w"
    c = jaxlm_config.load("experiments/sentiment.py:reward")
    jaxlm_config.override(c, [
        f"model.init_from=hf:{minilm_dir()}", "data.train_split=train[:640]", "data.eval_split=",
        "data.test_split=test[:256]", "data.max_seq_length=32", "data.buckets=()", "train.num_steps=40",
        "optim.learning_rate=2e-4", "optim.warmup_steps=4", "train.log_every=20", "train.checkpoint_every=40",
        "task.center_rewards_coefficient=0.01", "mesh.data=2",
    ])
    results = train.train_and_evaluate(c, workdir)
    return workdir, results


def test_a_short_reward_model_orders_held_out_pairs(reward_workdir):
    workdir, results = reward_workdir
    test = results["test"]
    print(f"MiniLM reward model, 40 steps of 16 pairs: held-out accuracy {test['accuracy']:.3f}, on pairs whose "
          f"ratings differ by > 0.5 {test['accuracy_gap_above_0.5']:.3f}, Pearson r {test['pearson']:.3f}")
    assert test["accuracy_gap_above_0.5"] > 0.7  # chance: 0.5
    assert test["pearson"] > 0.4
    assert test["accuracy_gap_above_2"] >= test["accuracy_gap_0_0.5"]  # clear human preferences are easier
    norm = json.loads((workdir / "reward_normalization.json").read_text())
    assert norm["pairs"] == 640 and norm["std"] > 0 and np.isfinite(norm["mean"])


def test_predict_prints_the_reward(reward_workdir, capsys):
    workdir, _ = reward_workdir
    assert cli.main(["predict", "--workdir", str(workdir), *EXAMPLES[:2]]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [(line[0], line[2]) for line in lines] == [("reward", EXAMPLES[0]), ("reward", EXAMPLES[1])]
    assert float(lines[0][1]) > float(lines[1][1])  # the amazing movie above the tedious film


def test_hf_export_scores_the_same_in_transformers_and_back(reward_workdir, tmp_path, capsys):
    workdir, _ = reward_workdir
    hf_dir = tmp_path / "hf"
    assert cli.main(["convert", "--to-hf", str(workdir), "--out", str(hf_dir)]) == 0
    model, info = transformers.BertForSequenceClassification.from_pretrained(hf_dir, output_loading_info=True)
    assert model.config.num_labels == 1 and not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    with torch.no_grad():
        scores = model.eval()(**tokenizer(EXAMPLES, padding=True, return_tensors="pt")).logits[:, 0].numpy()
    ours = [ranked[0][1] for ranked in jaxlm.load(workdir).predict(EXAMPLES)]
    np.testing.assert_allclose(ours, scores, atol=1e-5)
    assert scores.std() > 0.1
    back = tmp_path / "back"
    assert cli.main(["convert", "--from-hf", str(hf_dir), "--out", str(back)]) == 0
    assert "task 'reward'" in capsys.readouterr().out
    np.testing.assert_allclose([r[0][1] for r in jaxlm.load(back).predict(EXAMPLES)], scores, atol=1e-5)
