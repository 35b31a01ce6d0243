"""Sweeps: trials from get_sweep(), run two at a time, one crashing, interrupted, continued; results gathered."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxlm import config as jaxlm_config
from jaxlm import sweep
from tiny import DEMO

SWEEP_FILE = '''
from jaxlm import config as jaxlm_config

def get_config(variant="scratch"):
    return jaxlm_config.override(jaxlm_config.load("{demo}:scratch"), {fields!r})

def get_sweep():
    return {{"variant": "", "grid": {{"optim.learning_rate": [1e-3, 3e-3], "data.batch_size": [16]}}, "random": {{}},
            "num_random": 0, "random_seed": 0, "seeds": [0, 1], "metric": "eval.accuracy", "mode": "max"}}
'''


def _write_sweep(data_env, tmp_path):
    fields = {"model.preset": "bert-L2-H128", "data.max_seq_length": 32, "data.eval_batch_size": 32,
              "data.tokenizer": str(data_env / "tok"), "data.buckets": "()", "data.train_split": "test[:200]",
              "data.eval_split": "validation[:32]", "data.test_split": "", "optim.warmup_steps": 2,
              "train.num_steps": 60, "train.log_every": 10, "train.eval_every": 60, "train.checkpoint_every": 10,
              "train.best_metric": "", "mesh.data": 1}
    path = tmp_path / "sweep_tiny.py"
    path.write_text(SWEEP_FILE.format(demo=DEMO, fields=[f"{k}={v}" for k, v in fields.items()]))
    return path


def _sweep(path, workdir, *extra):
    return subprocess.Popen([sys.executable, "-m", "jaxlm.cli", "sweep", "--config", str(path), "--workdir",
                             str(workdir), "--parallel", "2", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _status(workdir, name):
    path = workdir / name / "trial.json"
    return json.loads(path.read_text())["status"] if path.exists() else "new"


def _launches(workdir, name):
    return (workdir / name / "log.txt").read_text().count("\n=== ")


def test_sweep_reports_a_crash_survives_an_interruption_and_continues(data_env, tmp_path):
    path = _write_sweep(data_env, tmp_path)
    workdir = tmp_path / "sweep"
    names = ["learning_rate=0.001,batch_size=16,seed=0", "learning_rate=0.001,batch_size=16,seed=1",
             "learning_rate=0.003,batch_size=16,seed=0", "learning_rate=0.003,batch_size=16,seed=1"]
    assert [t["name"] for t in sweep.trials(sweep.load_spec(str(path)))] == names
    (workdir / names[3]).mkdir(parents=True)
    (workdir / names[3] / "run").write_text("in the way")  # that trial's workdir: it crashes

    # First pass: once two trials are done, one crashed and one has a checkpoint, interrupt the sweep (as
    # Ctrl-C or a scheduler would).
    first = _sweep(path, workdir)
    deadline = time.time() + 240
    while time.time() < deadline and not (
            [_status(workdir, n) for n in names] == ["done", "done", "running", "crashed"]
            and list((workdir / names[2] / "run" / "checkpoints").glob("[0-9]*"))):
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    out = first.communicate(timeout=120)[0]
    assert first.returncode == 1, out
    assert [_status(workdir, n) for n in names] == ["done", "done", "interrupted", "crashed"], out
    assert f"crashed  {names[3]}: exit 2, jaxlm train: error: --workdir" in out and "not a directory" in out
    assert "sweep interrupted" in out

    # Second pass: done trials are kept, the interrupted one resumes from its checkpoint, the crashed one reruns.
    (workdir / names[3] / "run").unlink()
    second = _sweep(path, workdir)
    out = second.communicate(timeout=240)[0]
    assert second.returncode == 0, out
    assert "4 trials, 2 done, 2 to run" in out
    assert [_status(workdir, n) for n in names] == ["done"] * 4
    assert [_launches(workdir, n) for n in names] == [1, 1, 2, 2]
    assert "resumed from" in (workdir / names[2] / "log.txt").read_text()
    with open(workdir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == names and all(0 <= float(r["eval.accuracy"]) <= 1 for r in rows)
    assert {r["optim.learning_rate"] for r in rows} == {"0.001", "0.003"}
    with open(workdir / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 2 and {s["seeds done"] for s in summary} == {"2/2"}
    lr = {s["optim.learning_rate"]: float(s["median eval.accuracy"]) for s in summary}
    runs = {n: float(r["eval.accuracy"]) for n, r in zip(names, rows)}
    assert lr["0.001"] == pytest.approx((runs[names[0]] + runs[names[1]]) / 2)
    assert "median eval.accuracy" in out and (workdir / "sweep.png").stat().st_size > 0


def test_random_search_and_grid_expand_deterministically(tmp_path):
    spec = {"variant": "", "grid": {"data.batch_size": [16, 32]}, "num_random": 3, "random_seed": 7,
            "random": {"optim.learning_rate": ("log_uniform", 1e-5, 1e-3), "optim.warmup_steps": ("int", 0, 10),
                       "optim.name": ("choice", ["adamw", "lamb"])},
            "seeds": [0, 1], "metric": "eval.accuracy", "mode": "max"}
    first, again = sweep.trials(spec), sweep.trials(spec)
    assert first == again and len(first) == 2 * 3 * 2
    assert len({t["name"] for t in first}) == len(first)
    for t in first:
        assert 1e-5 <= t["fields"]["optim.learning_rate"] <= 1e-3 and 0 <= t["fields"]["optim.warmup_steps"] <= 10
        assert t["fields"]["optim.name"] in ("adamw", "lamb") and t["seed"] in (0, 1)


def test_a_bad_sweep_spec_names_what_is_wrong(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def get_config():\n    pass\n\ndef get_sweep():\n    return {'grid': {}, 'seeds': [0]}\n")
    with pytest.raises(jaxlm_config.ConfigError, match=r"lacks \['metric', 'mode', 'num_random'"):
        sweep.load_spec(str(path))
    path.write_text(f"from jaxlm import config\n\ndef get_config():\n    return config.load('{DEMO}:scratch')\n\n"
                    "def get_sweep():\n    return {'variant': '', 'grid': {'optim.lerning_rate': [1.0]}, "
                    "'random': {}, 'num_random': 0, 'random_seed': 0, 'seeds': [0], 'metric': 'x', 'mode': 'max'}\n")
    with pytest.raises(jaxlm_config.ConfigError, match=r"--config.optim.lerning_rate: no such config field; did you "
                                                       r"mean config.optim.learning_rate"):
        sweep.run(str(path), tmp_path / "never", dry_run=True)


@pytest.mark.parametrize("dist, why", [
    (("log_uniform", 0, 1e-3), r"0 < low <= high"), (("uniform", 1.0), r"low, high\) with finite numbers"),
    (("int", 0.5, 3), r"with integers"), (("choice", []), r"at least one value"), ("uniform", r"first item is one of"),
])
def test_a_malformed_distribution_is_a_config_error(tmp_path, dist, why):
    path = tmp_path / "bad.py"
    path.write_text("def get_config():\n    pass\n\ndef get_sweep():\n    return {'variant': '', 'grid': {}, "
                    f"'random': {{'optim.learning_rate': {dist!r}}}, 'num_random': 2, 'random_seed': 0, 'seeds': [0], "
                    "'metric': 'x', 'mode': 'max'}\n")
    with pytest.raises(jaxlm_config.ConfigError, match=r"\['random'\]\['optim.learning_rate'\]=.*: expected .*" + why):
        sweep.load_spec(str(path))


def test_a_crash_after_an_earlier_preempted_attempt_is_reported_as_a_crash(tmp_path):
    """The run's results.json of an earlier, preempted attempt does not make this attempt's crash 'interrupted'."""
    trial = sweep.Trial(tmp_path, {"name": "t", "fields": {}, "seed": 0}, f"{DEMO}:scratch", [])
    trial.workdir.mkdir(parents=True)
    (trial.workdir / "results.json").write_text(json.dumps({"step": 5, "stopped": "preempted"}))
    time.sleep(0.05)
    trial.command = [sys.executable, "-c", "raise SystemExit(1)"]
    trial.start()
    trial.process.wait()
    assert trial.finish(interrupted=False) == "crashed"
    assert trial.status["status"] == "crashed" and trial.status["returncode"] == 1


def test_the_shipped_sweep_expands_to_18_trials():
    spec = sweep.load_spec(str(DEMO).replace("demo_cpu.py", "sweep_wordnet_lexname.py"))
    names = [t["name"] for t in sweep.trials(spec)]
    assert len(names) == 18 and names[0] == "learning_rate=0.0001,batch_size=16,seed=0"
