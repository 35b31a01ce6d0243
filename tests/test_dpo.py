"""DPO and its family: pairs packed as segments, every loss_type against TRL's formulas (written out here in numpy
from TRL's DPOTrainer / CPOTrainer; benchmarks/trl_dpo.py runs TRL itself), and one run through the trainer on a
planted preference: it learns it, resumes bitwise, reads the reference's log-probabilities from its cache, and
refuses a bad reference or a pair of equal sides in one line."""

import json

import jax
import numpy as np
import pytest

from jaxlm import checkpoint, cli, train
from jaxlm import config as jaxlm_config
from jaxlm.data.preferences import DecoderPairs
from jaxlm.tasks import dpo
from minilm import minilm_dir
from tiny import set_fields


class _Chars:
    eos_id = pad_id = 0


def test_pairs_lie_side_by_side_as_segments_with_targets_on_the_responses():
    c = lambda s: np.array([ord(ch) for ch in s] + [0], np.int32)  # noqa: E731  (a response ends with <eos>)
    sides = [(np.array([ord("Q")], np.int32), c("ab"), c("x")),  # 1 + 3 + 1 + 2 = 7 tokens
             (np.array([ord("R")], np.int32), c("c"), c("yz")),  # 7 more: 14 <= 16 + 1, a row of 2 pairs
             (np.array([ord("S")], np.int32), c("dddddd"), c("e"))]  # 11: a row of its own
    pairs = DecoderPairs(sides, max_seq_length=16, pairs_per_row=2, pad_id=0, num_truncated=0)
    assert pairs.rows == [[0, 1], [2]] and len(pairs) == 2
    b = pairs.batch(np.array([0, 1, -1]), 0, 16)
    text = "".join(chr(i) if i else "|" for i in b["input_ids"][0][:14])
    assert text == "Qab|Qx|Rc|Ryz|"
    np.testing.assert_array_equal(b["segment_ids"][0][:15], [1] * 4 + [2] * 3 + [3] * 3 + [4] * 4 + [0])
    targets = [[chr(t) if t else "|" for t in b["targets"][0][(b["segment_ids"][0] == s) & (b["target_weights"][0] > 0)]]
               for s in (1, 2, 3, 4)]
    assert targets == [list("ab|"), list("x|"), list("c|"), list("yz|")]  # each response and its end, no prompt
    np.testing.assert_array_equal(b["pair_weight"], [[1, 1], [1, 0], [0, 0]])
    assert not b["target_weights"][2].any() and not b["attention_mask"][2].any()


def _trl(loss_type, c, r, c_ref, r_ref, n_c, n_r, beta, eps, gamma):
    """TRL's per-pair losses and rewards (DPOTrainer._compute_loss; CPOTrainer's 'simpo'), in numpy."""
    logsig = lambda x: -np.logaddexp(0, -x)  # noqa: E731
    d = (c - c_ref) - (r - r_ref)
    if loss_type == "sigmoid":
        return -logsig(beta * d) * (1 - eps) - logsig(-beta * d) * eps, beta * (c - c_ref), beta * (r - r_ref)
    if loss_type == "robust":
        loss = (-(1 - eps) * logsig(beta * d) + eps * logsig(-beta * d)) / (1 - 2 * eps)
        return loss, beta * (c - c_ref), beta * (r - r_ref)
    if loss_type == "hinge":
        return np.maximum(0, 1 - beta * d), beta * (c - c_ref), beta * (r - r_ref)
    avg = (c - c_ref) / n_c - (r - r_ref) / n_r
    if loss_type == "ipo":
        return (avg - 1 / (2 * beta)) ** 2, beta * (c - c_ref), beta * (r - r_ref)
    if loss_type == "sigmoid_norm":
        return -logsig(beta * avg), beta * (c - c_ref), beta * (r - r_ref)
    logits = c / n_c - r / n_r - gamma / beta  # simpo: average log-probabilities, no reference
    return -logsig(beta * logits) * (1 - eps) - logsig(-beta * logits) * eps, beta * c / n_c, beta * r / n_r


@pytest.mark.parametrize("loss_type", dpo.LOSS_TYPES)
def test_each_loss_type_is_trls_and_prefers_the_chosen_side(loss_type):
    rng = np.random.default_rng(0)
    batch_size, length, vocab, p = 3, 12, 7, 2
    segments = np.array([[1] * 3 + [2] * 4 + [3] * 2 + [4] * 3, [1] * 5 + [2] * 5 + [0] * 2, [0] * 12])
    weights = ((segments > 0) & (rng.random((batch_size, length)) < 0.8)).astype(np.float32)
    batch = {"segment_ids": segments, "target_weights": weights,
             "targets": rng.integers(0, vocab, (batch_size, length)).astype(np.int32),
             "pair_weight": np.array([[1, 1], [1, 0], [0, 0]], np.float32),
             "ref_logps": rng.normal(-8, 2, (batch_size, p, 2)).astype(np.float32)}
    logits = rng.normal(0, 2, (batch_size, length, vocab)).astype(np.float32)
    eps = 0.1 if loss_type in dpo.SMOOTHED else 0.0
    config = jaxlm_config.base()
    config.task.update(name="dpo", loss_type=loss_type, beta=0.3, label_smoothing=eps, pairs_per_row=p,
                       simpo_gamma=0.4, reference="hf:unused")
    task = dpo.DPO(config)
    losses, counts, sums = jax.jit(task.loss)({"logits": logits}, batch)
    summary = task.summarize(jax.device_get({**{f"{k}_loss_sum": v for k, v in losses.items()},
                                             **{f"{k}_count": v for k, v in counts.items()}, **sums}))

    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    token = np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0] * weights
    seq = lambda x, s: (x * (segments == s)).sum(1)  # noqa: E731
    real = [(0, 0), (0, 1), (1, 0)]  # (row, pair) of the three real pairs
    ref = [trl for trl in (_trl(loss_type, seq(token, 2 * k + 1)[row], seq(token, 2 * k + 2)[row],
                                *batch["ref_logps"][row, k], seq(weights, 2 * k + 1)[row],
                                seq(weights, 2 * k + 2)[row], 0.3, eps, 0.4) for row, k in real)]
    loss, chosen, rejected = (np.array(x) for x in zip(*ref))
    assert summary["pairs"] == 3
    assert summary["loss"] == pytest.approx(loss.mean(), rel=1e-5)
    assert summary["rewards/chosen"] == pytest.approx(chosen.mean(), rel=1e-5, abs=1e-6)
    assert summary["rewards/rejected"] == pytest.approx(rejected.mean(), rel=1e-5, abs=1e-6)
    assert summary["rewards/margins"] == pytest.approx((chosen - rejected).mean(), rel=1e-5, abs=1e-6)
    assert summary["rewards/accuracies"] == pytest.approx((chosen > rejected).mean())
    chosen_logps = [seq(token, 2 * k + 1)[row] for row, k in real]
    assert summary["logps/chosen"] == pytest.approx(np.mean(chosen_logps), rel=1e-5)

    # the planted direction: raising the chosen side's log-probabilities lowers every loss, the rejected's raises it
    grad = jax.grad(lambda x: task.loss({"logits": x}, batch)[0]["dpo"])(logits)
    onehot = np.eye(vocab)[batch["targets"]] * weights[..., None]
    side = np.where(segments % 2 == 1, 1.0, -1.0)[..., None]  # +1 chosen tokens, -1 rejected
    assert float(np.sum(np.asarray(grad) * onehot * side)) < 0


def test_bad_settings_are_refused_before_anything_runs():
    config = jaxlm_config.base()
    config.task.update(name="dpo", loss_type="kto")
    with pytest.raises(ValueError, match="loss_type='kto': expected one of sigmoid"):
        dpo.DPO(config)
    config.task.update(loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="loss_type 'hinge' has no label smoothing"):
        dpo.DPO(config)
    config.task.update(loss_type="sigmoid", label_smoothing=0.0)
    with pytest.raises(ValueError, match="config.task.reference: task 'dpo' needs a reference model"):
        dpo.DPO(config).reference


def _metrics(workdir, split):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == split]


def _dpo_config(root, **fields):
    return set_fields(jaxlm_config.load("experiments/gpt_cpu.py:pretrain"), {
        "task.name": "dpo", "model.init_from": f"jaxlm:{root / 'pretrain'}", "data.tokenizer": "init",
        "data.dataset": "local_preferences", "data.path": str(root), "data.text_fields": ("prompt", "chosen"),
        "data.max_seq_length": 48, "data.batch_size": 8, "data.eval_batch_size": 16, "data.eval_split": "validation",
        "task.pairs_per_row": 2,
        "optim.learning_rate": 3e-3, "optim.warmup_steps": 2, "train.num_steps": 8, "train.log_every": 1,
        "train.eval_every": 8, "train.checkpoint_every": 4, "mesh.data": 1, **fields})


def test_dpo_learns_a_planted_preference_resumes_bitwise_and_caches_the_reference(decoder, data_env, tmp_path, capsys):
    result = train.train_and_evaluate(_dpo_config(decoder), tmp_path / "straight")
    train_rows = _metrics(tmp_path / "straight", "train")
    assert train_rows[0]["rewards/margins"] == pytest.approx(0, abs=1e-5)  # the policy starts as the reference
    assert train_rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)
    ev = result["eval"]
    assert ev["rewards/accuracies"] > 0.9 and ev["rewards/margins"] > 0.5 and ev["pairs"] == 24
    assert ev["reference_accuracy"] < 0.5  # the reference did not hold the preference; DPO put it there
    assert ev["rewards/chosen"] > 0 > ev["rewards/rejected"]  # chosen more likely than under the reference

    # the reference scored each split once, cached by its parameters and the rows; the second run finds the same
    cache = data_env / "examples" / "reference"
    keys = sorted(p.name for p in cache.iterdir())
    assert len(keys) == 2  # train, validation
    train.train_and_evaluate(_dpo_config(decoder, **{"train.stop_after": 3}), tmp_path / "resumed")
    assert sorted(p.name for p in cache.iterdir()) == keys
    train.train_and_evaluate(_dpo_config(decoder), tmp_path / "resumed")
    jax.tree.map(np.testing.assert_array_equal, checkpoint.restore_params(tmp_path / "straight", prefer_best=False)[1],
                 checkpoint.restore_params(tmp_path / "resumed", prefer_best=False)[1])

    # bad input: one line, exit 2
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"prompt": "Q?", "chosen": " yes", "rejected": "  yes"}) + "\n")
    base = ["finetune", "--config", "experiments/gpt_cpu.py:pretrain", "--workdir", str(tmp_path / "bad"),
            *(f"--config.{k}={v}" for k, v in {
                "task.name": "dpo", "model.init_from": f"jaxlm:{decoder / 'pretrain'}", "data.tokenizer": "init",
                "data.dataset": "local_preferences", "data.text_fields": "('prompt','chosen')",
                "data.max_seq_length": 48, "data.eval_split": "", "data.batch_size": 8}.items())]
    capsys.readouterr()
    assert cli.main(base + [f"--config.data.path={same}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chosen and rejected are the same text" in err[0], err
    bert = f"hf:{minilm_dir()}"  # another vocabulary (and no decoder)
    assert cli.main(base + [f"--config.data.path={decoder}", f"--config.task.reference={bert}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"config.task.reference={bert}: " in err[0] and "vocab" in err[0], err


def test_a_checkpoint_saved_on_8_devices_starts_a_run_on_1(decoder):
    """model.init_from (and a DPO reference) read host arrays, whatever the devices the checkpoint was saved from."""
    import os
    import subprocess
    import sys

    code = ("import sys, jax; from jaxlm import checkpoint; _, p = checkpoint.restore_params(sys.argv[1]); "
            "print(jax.device_count(), sorted(p))")
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code, str(decoder / "pretrain")], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.split("\n")[-2] == "1 ['gpt']"
