"""A workdir is held by one run at a time, and its record stays the run its checkpoints hold. (Two processes launched
together and Ctrl-C from outside are in test_reliability's campaign; a finished run rerun is in test_train.)"""

import json
import os
import signal
import subprocess
import sys

import pytest

from jaxlm import config as jaxlm_config
from jaxlm import workdir
from tiny import DEMO


def test_a_held_workdir_refuses_a_second_run_at_once_naming_the_holder(tmp_path):
    with workdir.hold(tmp_path):
        with pytest.raises(workdir.WorkdirInUse, match=rf"--workdir {tmp_path}: in use by another run \(pid "
                                                       rf"{os.getpid()} on \S+, started .*\); wait for it"):
            with workdir.hold(tmp_path):
                pass
    with workdir.hold(tmp_path):  # released with its holder
        pass


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import pathlib, sys, time; from jaxlm import workdir\n"
                               f"with workdir.hold(pathlib.Path({str(tmp_path)!r})):\n"
                               "    print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(workdir.WorkdirInUse, match=f"pid {holder.pid} on"):
        with workdir.hold(tmp_path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with workdir.hold(tmp_path):  # the kernel released it
        pass


def _config(**fields):
    return jaxlm_config.override(jaxlm_config.load(f"{DEMO}:pretrain"), [f"{k}={v}" for k, v in fields.items()])


def _trained(tmp_path, **fields):
    (tmp_path / "checkpoints" / "8").mkdir(parents=True)
    (tmp_path / "config.json").write_text(_config(**fields).to_json_best_effort(indent=2))
    return tmp_path


def test_a_resume_takes_the_saved_settings_and_records_what_may_change(tmp_path):
    assert workdir.check_resume(_config(), tmp_path) == {}  # nothing trained here: any settings
    _trained(tmp_path)
    assert workdir.check_resume(_config(), tmp_path) == {}
    changes = workdir.check_resume(_config(**{"train.num_steps": 800, "mesh.fsdp": 2}), tmp_path)
    assert changes == {"mesh.fsdp": [1, 2], "train.num_steps": [400, 800]}
    with pytest.raises(ValueError, match=r"its checkpoints were trained with data.batch_size=32, optim.learning_rate="
                                         r"0.001 \(.*config.json\); this run has data.batch_size=64, "
                                         r"optim.learning_rate=0.002: resume with the saved settings"):
        workdir.check_resume(_config(**{"optim.learning_rate": 2e-3, "data.batch_size": 64}), tmp_path)
    with pytest.raises(ValueError, match=r"holds another experiment \(task 'pretrain' on 'embedded_corpus'"):
        workdir.check_resume(_config(**{"task.name": "causal_lm"}), tmp_path)


def test_a_saved_config_from_before_a_field_existed_still_resumes(tmp_path):
    _trained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["task"]["num_generations"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert workdir.check_resume(_config(**{"task.num_generations": 8}), tmp_path) == {}


def test_resumes_are_appended_to_the_record_never_rewriting_it(tmp_path):
    workdir.record_start(tmp_path, _config())
    workdir.record_resume(tmp_path, _config(**{"train.num_steps": 800}), 400, {"train.num_steps": [400, 800]})
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["config"]["train"]["num_steps"] == 400 and record["versions"]["jax"]
    assert [(r["step"], r["changes"]) for r in record["resumes"]] == [(400, {"train.num_steps": [400, 800]})]
