"""Multi-host on one machine: two processes of 4 fake CPU devices each, joined by jax.distributed (gloo), by flags
or as the tasks of a SLURM job.

They must train as one process with 8 devices does (up to the order of the collectives' sums), save the
same step when only one of them is preempted, and resume together, passing over together a checkpoint that one
of them cannot read.
"""

import json
import re
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxlm import checkpoint, cli, distributed, train
from tiny import DEMO, tiny

STEPS, PREEMPT_AFTER, EVERY = 18, 4, 3
FIELDS = {"train.num_steps": STEPS, "train.log_every": 1, "train.checkpoint_every": EVERY, "data.eval_split": "",
          "optim.learning_rate": 2e-3}


def _overrides(config) -> list[str]:
    flat = {f"{k}.{f}": v for k in ("model", "data", "task", "optim", "train", "mesh")
            for f, v in config[k].items() if not isinstance(v, type(config))}
    return [f"--config.{k}={v}" for k, v in flat.items() if k != "model.overrides"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workdir, config, *extra, env1=None, slurm=False):
    """Two `jaxlm pretrain` processes of one run (4 devices each), their outputs in workdir/../proc<i>.txt;
    `env1`: more environment for process 1 alone. Joined by the --coordinator flags, or (`slurm`) by nothing but
    the environment srun gives its two tasks."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    procs = []
    for i in range(2):
        out = open(workdir.parent / f"proc{i}.txt", "w")
        join = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
        task_env = {**env, **((env1 or {}) if i else {})}
        if slurm:
            join = []
            task_env.update(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="2",
                            SLURM_PROCID=str(i), SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=str(port))
        args = [sys.executable, "-m", "jaxlm.cli", "pretrain", "--config", f"{DEMO}:pretrain",
                "--workdir", str(workdir), *join, *_overrides(config), *extra]
        procs.append(subprocess.Popen(args, env=task_env, stdout=out, stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(workdir, procs, timeout=600) -> tuple[list[dict], list[str]]:
    """Wait for both processes; each must exit 0. Returns the summaries they printed, and their outputs."""
    summaries, texts = [], []
    for i, p in enumerate(procs):
        try:
            code = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            code = "timeout"
        text = (workdir.parent / f"proc{i}.txt").read_text()
        assert code == 0, f"process {i}: exit {code}\n{text[-3000:]}"
        summaries.append(json.loads(text[text.rindex("\n{\n") + 1:]))
        texts.append(text)
    return summaries, texts


def _losses(workdir) -> dict[int, float]:
    """Train loss by step from metrics.jsonl (its complete lines: it may be being written)."""
    path = workdir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    records = [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_two_processes_match_one_agree_on_a_preemption_and_pass_over_what_one_cannot_read(data_env, tmp_path):
    config = tiny("pretrain", data_env, **FIELDS)
    reference = tmp_path / "one" / "run"
    train.train_and_evaluate(config, reference)  # this process: 8 fake devices
    expected = _losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))

    # Two processes; once they train, preempt process 1 alone: both must stop at, and save, the same step.
    workdir = tmp_path / "two" / "run"
    workdir.parent.mkdir()
    procs = _start(workdir, config)
    deadline = time.time() + 600
    while max(_losses(workdir), default=0) < PREEMPT_AFTER and time.time() < deadline and procs[1].poll() is None:
        time.sleep(0.05)
    if max(_losses(workdir), default=0) < PREEMPT_AFTER:
        for p in procs:
            p.kill()
        pytest.fail(f"the two processes did not reach step {PREEMPT_AFTER}: {(workdir.parent / 'proc0.txt').read_text()}")
    procs[1].send_signal(signal.SIGTERM)
    preempted, _ = _finish(workdir, procs)
    saved = preempted[0]["step"]
    assert [s.get("stopped") for s in preempted] == ["preempted", "preempted"], preempted
    assert preempted[1]["step"] == saved and PREEMPT_AFTER <= saved < STEPS
    assert checkpoint.Checkpoints(workdir, keep=3, identity={}).latest_step() == saved

    # Both resume to the end; process 1 alone cannot read the preemption's checkpoint (an injected I/O error):
    # both restore the one before it, set the unreadable one aside together, and train on. The whole trajectory
    # is the one-process one. This time they are two tasks of a SLURM job, given no flags: they find each other.
    final, outputs = _finish(workdir, _start(workdir, config, env1={"JAXLM_FAULT": f"read:{saved}"}, slurm=True))
    before = (saved - 1) // EVERY * EVERY
    assert [s["step"] for s in final] == [STEPS, STEPS]
    assert "injected" in outputs[1] and f"checkpoint {workdir / 'checkpoints' / str(saved)} cannot be read" in outputs[0]
    assert f"resumed from {workdir / 'checkpoints' / str(before)}" in outputs[0]
    assert [p.name for p in (workdir / "unreadable").iterdir()] == [f"checkpoints-{saved}"]
    assert "joined the 2 processes of this slurm job" in outputs[0]
    assert "INFO" not in outputs[1] and "step/s" not in outputs[1]  # one voice: process 0 logs, process 1 is quiet
    got = _losses(workdir)
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)], rtol=1e-5)


def test_a_coordinator_that_never_answers_is_one_line_not_an_abort(monkeypatch, capsys):
    """Process 1 of 2 whose coordinator is not there: jax's client would abort the process (a C++ stack trace,
    exit 134) when its deadline passes; jaxlm waits for the port as long and stops with one line, exit 2."""
    for name in distributed.ENV.values():
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    argv = ["pretrain", "--config", DEMO, "--workdir", "/tmp/never", "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2", "--process-id", "1", "--init-timeout", "2"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert 2 <= time.monotonic() - start < 30
    assert len(err) == 1 and re.search(rf"process 1 of 2 could not reach the coordinator at --coordinator "
                                       rf"127.0.0.1:{port} within 2 s \(Connection refused\): is process 0", err[0])
    monkeypatch.setenv("JAXLM_INIT_TIMEOUT", "0")
    with pytest.raises(ValueError, match=r"\$JAXLM_INIT_TIMEOUT=0: expected a positive number of seconds"):
        distributed.initialize(coordinator=f"127.0.0.1:{port}", num_processes=2, process_id=1)
    # A name that cannot exist (RFC 6761) fails at once; a resolver that cannot answer at all, within the wait.
    with pytest.raises(OSError, match=r"--coordinator no-such-host.invalid:1234(: the host name does not resolve|"
                                      r" within 3 s)"):
        distributed.initialize(coordinator="no-such-host.invalid:1234", num_processes=2, process_id=1, init_timeout=3)


def test_explicit_multihost_flags_must_come_together(monkeypatch):
    for name in distributed.ENV.values():
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match=r"--num-processes .*--process-id"):
        distributed.initialize(coordinator="127.0.0.1:1234")
    monkeypatch.setenv("JAXLM_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match=r"--process-id 2: expected 0 <= id < --num-processes 2"):
        distributed.initialize(coordinator="127.0.0.1:1234", process_id=2)
    with pytest.raises(ValueError, match=r"\$JAXLM_PROCESS_ID='one': expected an integer"):
        monkeypatch.setenv("JAXLM_PROCESS_ID", "one")
        distributed.initialize(coordinator="127.0.0.1:1234")


def test_only_a_job_of_several_tasks_is_joined(monkeypatch):
    """srun's and mpirun's environments are found (the end-to-end run above joins a SLURM job's two tasks);
    a job of one task trains alone."""
    for name in [n for n in os.environ if n.startswith(("SLURM_", "OMPI_"))]:
        monkeypatch.delenv(name)
    assert distributed.detected_cluster() is None
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.96.0.1:34911")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert distributed.detected_cluster() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert distributed.detected_cluster() == "ompi"
