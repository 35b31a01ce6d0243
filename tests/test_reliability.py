"""Reliability: killed, preempted, out of disk, corrupted, diverging or fed bad input, a run loses nothing and
says clearly what went wrong. scripts/reliability.py runs the long campaign (>= 10 kills) with these pieces."""

import concurrent.futures
import importlib.util
import logging
import pathlib
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxlm import checkpoint, cli, faults, optim, steps, train_state
from jaxlm import config as jaxlm_config
from jaxlm.models import bert

REPO = pathlib.Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("reliability", REPO / "scripts" / "reliability.py")
R = importlib.util.module_from_spec(_spec)
sys.modules["reliability"] = R
_spec.loader.exec_module(R)

NUM_STEPS = 16  # checkpoints every 4, evaluations at 8 and 16
PLAN = [R.Interruption("sigint2", "step:6"),  # Ctrl-C twice: stopped at once
        R.Interruption("kill", "commit:8"),  # mid-commit of 8
        R.Interruption("sigterm", "step:10"), R.Interruption("full-disk"),  # a real SIGTERM; the save of 12 fails
        R.Interruption("sigint", "step:14"),  # Ctrl-C: saved, exit 130
        R.Interruption("kill", "eval:16")]
NAN_STEP = 9


@pytest.fixture(scope="module")
def runs(data_env, tmp_path_factory):
    """A reference run, then (in parallel) the interrupted run, and the two divergence runs and two runs launched
    together on one workdir, in subprocesses."""
    lab = R.Lab(tmp_path_factory.mktemp("reliability"), tokenizer=data_env / "tok")
    reference = lab.root / "reference"
    first = lab.run(lab.argv(reference, **{"train.num_steps": NUM_STEPS}))
    assert first.rc == 0, first.stderr[-3000:]

    def divergence_then_two_runs():
        return (R.divergence(lab, reference, lab.root, NUM_STEPS, NAN_STEP),
                R.two_runs_one_workdir(lab, reference, lab.root / "two-runs", NUM_STEPS))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        interrupted = pool.submit(R.campaign, lab, reference, lab.root / "interrupted", NUM_STEPS, plan=PLAN,
                                  say=lambda *_: None)
        others = pool.submit(divergence_then_two_runs)
        return lab, reference, interrupted.result(), *others.result()


def test_killed_preempted_interrupted_out_of_disk_and_corrupted_then_resumed_bitwise(runs):
    lab, reference, report, _, _ = runs
    assert report["problems"] == [], "\n".join(report["problems"] + [str(lab.logs)])
    done = {i["fault"]: i for i in report["interruptions"]}
    assert [i["fault"] for i in report["interruptions"]] == [p.describe() for p in PLAN]
    # Ctrl-C twice stops at once, as a kill does (the asynchronous save of 4 may be cut short): the relaunch
    # resumes from the newest complete checkpoint, if any.
    assert done["sigint2 step:6"]["exit"] == 130 and done["sigint2 step:6"]["complete_checkpoint"] in (None, 4)
    assert done["kill commit:8"]["resumed_from"] == done["sigint2 step:6"]["complete_checkpoint"]
    # A kill mid-save leaves a temporary directory: never read (each relaunch resumed from the newest
    # complete step), and removed by the next run. No relaunch found the workdir locked by the killed run.
    assert report["unfinished_seen"] >= 1 and report["resumes_from_complete"] == report["resumes"] >= 5
    # SIGTERM: exit 0 with a checkpoint of the step reached; the relaunch resumed from it.
    assert done["sigterm step:10"]["exit"] == 0 and done["sigterm step:10"]["complete_checkpoint"] == 10
    assert done["full-disk"]["resumed_from"] == 10 and done["full-disk"]["exit"] == 2
    # Ctrl-C once: the step finished and saved (the full disk's failed save of 12 was never read), exit 130.
    assert done["sigint step:14"]["resumed_from"] == 10 and done["sigint step:14"]["exit"] == 130
    assert done["sigint step:14"]["complete_checkpoint"] == 14 and done["kill eval:16"]["resumed_from"] == 14
    # Before the last relaunch the two newest checkpoints were corrupted: it fell back past them (both set
    # aside in unreadable/), and still every checkpoint (4, 8, 12, 16, best) equals the reference's bitwise.
    assert len(list((lab.root / "interrupted" / "unreadable").iterdir())) == 2
    assert report["compared"]["equal"] >= 5 and not report["compared"]["nonfinite"]


def test_two_runs_launched_on_one_workdir_one_trains_the_other_stops_at_once(runs):
    lab, _, _, _, two = runs
    assert two["problems"] == [], "\n".join(two["problems"] + [str(lab.logs)])
    assert two["exits"] == [0, 2] and two["compared"]["equal"] >= 5  # checkpoints 4, 8, 12, 16 and the best


def test_nan_batch_is_skipped_or_stops_the_run_at_its_last_good_state(runs):
    lab, _, _, diverged, _ = runs
    assert diverged["problems"] == [], "\n".join(diverged["problems"] + [str(lab.logs)])
    assert diverged["skip_checkpoints_finite"] >= 5  # checkpoints 4..16 and the best: none holds a NaN


# ------------------------------------------------------------------------------------------- checkpoints alone


def _state(value: float):
    return {"w": jnp.full((4, 8), value), "step": jnp.asarray(int(value), jnp.int32)}


def _abstract():
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), _state(0.0))


def _saved(workdir, steps_, **kwargs):
    ckpts = checkpoint.Checkpoints(workdir, keep=10, identity={"task": "t"}, **kwargs)
    for s in steps_:
        ckpts.save(s, _state(float(s)), {"step": s})
    ckpts.wait()
    return ckpts


def test_faults_unarmed_cost_nothing():
    assert faults.hit is faults._off and faults.poison is faults._identity  # no-op functions, no lookups
    batch = {"x": np.zeros(2)}
    assert faults.poison(batch, 1) is batch
    for bad in ("nowhere:1", "step:x", "step:1:nan", "batch:2:kill", "write:1:kill", "step:3:ioerror"):
        with pytest.raises(ValueError, match="JAXLM_FAULT"):
            faults.parse(bad)


@pytest.mark.parametrize("nth", [1, 3, 5])
def test_storage_failing_on_the_nth_write_is_a_clear_error_and_the_last_checkpoint_stays(tmp_path, nth):
    ckpts = _saved(tmp_path, [1])
    faults.arm(f"write:{nth}")
    try:
        with pytest.raises(checkpoint.StorageError) as e:
            ckpts.save(2, _state(2.0), {"step": 2})
            ckpts.wait()
    finally:
        faults.arm("")
        ckpts.close()
    assert f"cannot write checkpoint {tmp_path}/checkpoints/2: No space left on device" in str(e.value)
    assert f"{tmp_path}/checkpoints/1, is intact" in str(e.value)
    ckpts = checkpoint.Checkpoints(tmp_path, keep=10, identity={"task": "t"})
    step, state, data, _ = ckpts.restore(_abstract(), step=1)
    assert step == 1 and data == {"step": 1} and float(state["w"][0, 0]) == 1.0
    # What restore picks is whole: 1, or 2 when only orbax's own _CHECKPOINT_METADATA failed (not needed to read)
    step, state, data, _ = ckpts.restore(_abstract())
    assert data == {"step": step} and float(state["w"][0, 0]) == step


def test_a_relative_workdir_saves_and_restores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `jaxlm pretrain --workdir workdirs/demo/pretrain`, as scripts/main.sh runs it
    _saved("workdirs/run", [1]).close()
    step, state, data, _ = checkpoint.Checkpoints("workdirs/run", keep=3, identity={"task": "t"}).restore(_abstract())
    assert step == 1 and data == {"step": 1} and (tmp_path / "workdirs" / "run" / "checkpoints" / "1").is_dir()
    checkpoint.write_params("workdirs/imported", {}, {"w": np.ones(2)})  # `jaxlm convert --from-hf X --out workdirs/y`
    assert checkpoint.restore_params("workdirs/imported")[1]["w"].tolist() == [1.0, 1.0]  # init_from="jaxlm:workdirs/y"


def test_unwritable_checkpoint_directory_fails_at_start(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where a directory must be")
    with pytest.raises(checkpoint.StorageError, match="checkpoints: cannot write checkpoints there: it is a file"):
        checkpoint.Checkpoints(tmp_path, keep=3, identity={})


def test_corrupted_checkpoints_are_reported_set_aside_and_the_previous_one_restored(tmp_path, caplog):
    _saved(tmp_path, [1, 2, 3]).close()
    ckpt = tmp_path / "checkpoints"
    biggest = max((p for p in (ckpt / "3" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:10])  # a truncated file
    (ckpt / "2" / "meta" / "metadata").unlink()  # missing metadata
    ckpts = checkpoint.Checkpoints(tmp_path, keep=10, identity={"task": "t"})
    with caplog.at_level(logging.ERROR, logger="jaxlm.checkpoint"):
        step, state, _, _ = ckpts.restore(_abstract())
    assert step == 1 and float(state["w"][0, 0]) == 1.0
    assert f"checkpoint {ckpt}/3 cannot be read" in caplog.text and f"checkpoint {ckpt}/2 cannot be read" in caplog.text
    assert sorted(p.name for p in (tmp_path / "unreadable").iterdir()) == ["checkpoints-2", "checkpoints-3"]
    for s in (2, 3):  # their steps can be saved again (orbax would silently skip a step below the latest)
        ckpts.save(s, _state(float(s)), {"step": s})
    ckpts.wait()
    assert ckpts.restore(_abstract())[0] == 3


def test_checkpoints_none_of_which_can_be_read_are_an_error_not_a_fresh_start(tmp_path):
    _saved(tmp_path, [1, 2]).close()
    for s in (1, 2):
        (tmp_path / "checkpoints" / str(s) / "meta" / "metadata").unlink()
    with pytest.raises(ValueError, match=r"no checkpoint can be read \(.*checkpoints/2: .*checkpoints/1: .*"
                                         r"not starting from scratch"):
        checkpoint.Checkpoints(tmp_path, keep=10, identity={"task": "t"}).restore(_abstract())
    assert not (tmp_path / "unreadable").exists()


def test_a_checkpoint_of_the_other_layer_layout_is_refused_with_the_setting_that_reads_it(tmp_path):
    """model.scan_layers may change between experiments, not within a resume: the checkpoint is refused with the
    flag to resume it, before anything is read into the state, and is neither set aside nor taken for unreadable."""
    _saved(tmp_path, [1, 2], layout={"scan_layers": False}).close()
    with pytest.raises(ValueError, match=r"checkpoints/2: saved with model.scan_layers=False, this run has "
                                         r"model.scan_layers=True: resume with --config.model.scan_layers=False"):
        checkpoint.Checkpoints(tmp_path, keep=10, identity={"task": "t"}, layout={"scan_layers": True})
    assert not (tmp_path / "unreadable").exists()
    same = checkpoint.Checkpoints(tmp_path, keep=10, identity={"task": "t"}, layout={"scan_layers": False})
    assert same.restore(_abstract())[0] == 2


def test_a_nan_evaluation_never_becomes_the_best(tmp_path):
    ckpts = checkpoint.Checkpoints(tmp_path, keep=3, identity={}, best_metric="accuracy")
    assert not ckpts.save_if_best(1, _state(1.0), {"step": 1}, {"accuracy": 0.9, "loss": float("nan")})
    assert ckpts.save_if_best(2, _state(2.0), {"step": 2}, {"accuracy": 0.5, "loss": 1.0})
    ckpts.wait()
    ckpts.close()
    assert R.committed(tmp_path / "best") == [2]


class _Toy(nn.Module):
    @nn.compact
    def __call__(self, batch, deterministic=True):
        return {"y": nn.Dense(1)(batch["x"])[:, 0]}


def _toy_loss(out, batch):
    return {"mse": jnp.sum(jnp.square(out["y"] - batch["t"]))}, {"mse": jnp.float32(out["y"].shape[0])}, {}


def test_a_step_evaluated_again_after_a_resume_keeps_its_first_best_save(tmp_path):
    """A run resumed from before step 2 (on another mesh, say) evaluates step 2 again, a little better: best/ keeps
    the save it has of that step (orbax would refuse to write the step twice) and the run goes on."""
    ckpts = checkpoint.Checkpoints(tmp_path, keep=3, identity={}, best_metric="accuracy")
    assert ckpts.save_if_best(2, _state(2.0), {"step": 2}, {"accuracy": 0.5})
    ckpts.wait()
    ckpts.close()
    again = checkpoint.Checkpoints(tmp_path, keep=3, identity={}, best_metric="accuracy")
    assert again.best_value == 0.5
    assert not again.save_if_best(2, _state(2.5), {"step": 2}, {"accuracy": 0.5001})
    assert again.save_if_best(3, _state(3.0), {"step": 3}, {"accuracy": 0.6})
    again.wait()
    again.close()
    assert R.committed(tmp_path / "best") == [3]


def test_a_nan_gradient_is_refused_and_a_non_finite_learning_rate_is_a_config_error():
    """A NaN loss and gradient: the update is refused and counted. The hyperparameters that could make an update
    from finite gradients non-finite - a learning rate or weight decay not finite in float32 (1e39 is a finite
    Python float), an Adam epsilon of 0 (0/0 where a parameter has no gradient yet) - are refused when the
    optimizer is made, naming the field."""
    model, tx = _Toy(), optax.adam(1e-3)
    batch = {"x": jnp.ones((4, 3)), "t": jnp.full(4, jnp.nan), "attention_mask": jnp.ones((4, 2), jnp.int32)}
    params = model.init(jax.random.key(0), batch)["params"]
    state = train_state.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params), skipped=jnp.int32(0))
    new, metrics = steps.train_step(state, batch, jax.random.key(1), model=model, tx=tx, loss=_toy_loss, accumulate=1)
    assert not np.isfinite(float(metrics["grad_norm"])) and int(new.skipped) == 1 and int(new.step) == 1
    jax.tree.map(np.testing.assert_array_equal, new.params, params)
    c = jaxlm_config.base().optim
    c.num_steps = 10**6
    for field, value in (("learning_rate", 1e39), ("learning_rate", float("nan")), ("weight_decay", float("inf")),
                         ("eps", 0.0), ("eps", 1e-50), ("b2", 1.0)):
        with pytest.raises(ValueError, match=re.escape(f"config.optim.{field}={value}: expected")):
            optim.make_optimizer(ml_collections.ConfigDict({**c.to_dict(), field: value}))


# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_input(data_env, tmp_path_factory):
    """A Context for the bad-input cases; its 'trained' workdir holds a bert-L2-H128 (vocab 512) checkpoint."""
    root = tmp_path_factory.mktemp("bad-input")
    lab = R.Lab(root, tokenizer=data_env / "tok")
    config = bert.preset("bert-L2-H128", vocab_size=512, max_position_embeddings=128)
    model = bert.BertForPreTraining(config)
    params = nn.unbox(model.init(jax.random.key(0), {"input_ids": jnp.zeros((1, 8), jnp.int32)})["params"])
    checkpoint.write_params(root / "trained", {"task": "pretrain", "model": config.architecture()}, params)
    argv = lab.argv(root / "trained")  # and the record a pretraining run of it would have left
    saved = jaxlm_config.override(jaxlm_config.load(argv[2]), [a.removeprefix("--config.") for a in argv[5:]])
    (root / "trained" / "config.json").write_text(saved.to_json_best_effort(indent=2))
    return R.Context.make(lab, root / "cases", root / "trained")


@pytest.mark.parametrize("name", list(R.BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_exit_2(bad_input, name, capsys):
    argv = R.prepare_bad_input(name, bad_input)
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert R.check_bad_input(name, bad_input, rc, err) == [], err[-2000:]
