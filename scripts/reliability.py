"""Reliability campaign: kill, preempt, starve and corrupt a small pretraining run; feed the CLI bad input.

    .venv/bin/python scripts/reliability.py [--kills 12] [--others 6] [--seed 0] [--root DIR]

About 5 to 7 minutes on 2 CPU cores with the defaults. What it does, with bert-L2-H128 on 2 fake CPU devices
(parameters sharded over them, fsdp=2), checkpoints every 4 steps (all kept), evaluation every 8, the best
checkpoint kept by mlm_accuracy:

1. an uninterrupted reference run;
2. the same run interrupted at seeded fault points (jaxlm.faults): --kills SIGKILLs, in turn in the middle
   of a step, just after an asynchronous save started, inside orbax's atomic commit, during evaluation (each
   relaunch also shows that a killed run leaves no lock behind); and --others other faults, in turn: SIGTERM
   from inside and a real one from outside (the run must save and exit 0), a full disk (RLIMIT_FSIZE) and a
   storage layer failing on its n-th write (a clear error, exit 2), Ctrl-C (save, exit 130) and Ctrl-C twice
   (stop at once, exit 130). Each relaunch must resume from the newest complete checkpoint (an unfinished one
   is never read). Before the last relaunch the two newest checkpoints are corrupted (a truncated array file,
   a deleted metadata file): it must fall back past them. In the end every checkpoint (latest and best) must
   equal the reference's bitwise, and none be non-finite;
3. divergence: a NaN batch is skipped and counted ('skip'), or stops the run with exit 1 and its last good
   state saved ('stop');
4. two runs launched together on one workdir: one trains (bitwise the reference), the other stops at once
   with exit 2 and a line naming the holder;
5. bad input through the CLI, each in its own process: one line naming the problem, exit 2, no traceback.

tests/test_reliability.py runs the same pieces, shorter (3 kills), in CI.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(REPO / "experiments" / "demo_cpu.py")

RUN = {  # the run every fault is tried on: small, with checkpoints and evaluations to hit
    "model.preset": "bert-L2-H128", "data.max_seq_length": 32, "data.batch_size": 16, "data.eval_batch_size": 32,
    "data.eval_split": "validation[:48]", "task.max_predictions_per_seq": 5, "optim.warmup_steps": 2,
    "optim.schedule": "constant", "train.log_every": 1, "train.eval_every": 8, "train.checkpoint_every": 4,
    "train.keep": 1000, "train.best_metric": "mlm_accuracy", "mesh.data": 1, "mesh.fsdp": 2,
}
FULL_DISK_BYTES = 1 << 20  # RLIMIT_FSIZE: the logs fit, a checkpoint's array file (~3 MB) does not
FULL_DISK = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); n = int(sys.argv[1]); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])")


# ------------------------------------------------------------------------------------------- running jaxlm


@dataclasses.dataclass
class Launch:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def resumed_from(self) -> int | None:
        found = re.findall(r"resumed from \S+ at step (\d+)", self.stderr)
        return int(found[-1]) if found else None

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def summary(self) -> dict:
        """The JSON the CLI prints at the end of a run ({} if it did not get there)."""
        start = self.stdout.find("{\n")
        return json.loads(self.stdout[start:]) if start >= 0 else {}


class Lab:
    """Runs `jaxlm pretrain` in fresh processes: fake CPU devices, a shared compilation cache, faults."""

    def __init__(self, root: pathlib.Path, tokenizer: pathlib.Path | None = None, devices: int = 2):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.tokenizer = pathlib.Path(tokenizer) if tokenizer else self.root / "tokenizer"
        if not (self.tokenizer / "spm.model").exists():
            from jaxlm.data.tokenizer import train_tokenizer_from_dataset

            train_tokenizer_from_dataset("embedded_corpus", vocab_size=512, out_dir=self.tokenizer, max_sentences=4000)
        self.env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
                    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                    "JAX_COMPILATION_CACHE_DIR": str(self.root / "jax-cache"),
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
        self.env.pop("JAXLM_FAULT", None)
        self._numbers = itertools.count(1)  # of launches (their logs), also from several threads
        self.launches = 0

    def argv(self, workdir, command: str = "pretrain", variant: str = "pretrain", **fields) -> list[str]:
        fields = {**RUN, "data.tokenizer": str(self.tokenizer), **fields}
        return [command, "--config", f"{DEMO}:{variant}", "--workdir", str(workdir),
                *(f"--config.{k}={v}" for k, v in fields.items())]

    def run(self, argv: list[str], *, fault: str = "", file_size: int | None = None, signals: tuple = (),
            timeout: float = 600) -> Launch:
        """`jaxlm ARGV` in a new process; `signals` are sent from here, in turn, once the fault point pauses (each
        after the run has answered the one before: Python runs one handler for signals that arrive together)."""
        self.launches = number = next(self._numbers)
        log = self.logs / f"{number:03d}.log"
        env = {**self.env, **({"JAXLM_FAULT": fault} if fault else {})}

        command = [sys.executable, "-m", "jaxlm.cli", *argv]
        if file_size:  # a full disk: a file-size limit whose signal is ignored (writes fail with EFBIG), set by a
            command = [sys.executable, "-c", FULL_DISK, str(file_size), *command]  # trampoline (no fork hooks)
        start = time.perf_counter()
        with open(log, "w") as err:
            proc = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=err)
            for i, signum in enumerate(signals):
                awaited = "jaxlm fault injection: pause" if i == 0 else ANSWERS[signals[i - 1]]
                while proc.poll() is None and awaited not in log.read_text():
                    if time.perf_counter() - start > timeout:
                        break
                    time.sleep(0.02)
                if proc.poll() is None:
                    proc.send_signal(signum)
            try:
                stdout, _ = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - start)))
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
        return Launch(proc.returncode, stdout, log.read_text(), time.perf_counter() - start)


# ------------------------------------------------------------------------------------------- checkpoints on disk


def committed(directory: pathlib.Path) -> list[int]:
    """The complete checkpoints of a checkpoints/ or best/ directory (orbax renames a step into place when done)."""
    return sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.is_dir() else []


def unfinished(workdir: pathlib.Path) -> list[str]:
    """Temporary directories of saves that never completed."""
    return sorted(str(p.relative_to(workdir)) for sub in ("checkpoints", "best")
                  for p in (workdir / sub).glob("*.orbax-checkpoint-tmp*"))


def read_checkpoint(step_dir: pathlib.Path) -> tuple[dict, dict]:
    """(state as numpy arrays, data position) of one checkpoint step directory, on any device count."""
    import jax
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(step_dir / "state").item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(restore_args=args))
    return state, json.loads((step_dir / "data" / "metadata").read_text())


def same_checkpoint(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Bitwise equal states (parameters, optimizer, step, skipped count) and data positions."""
    import jax

    (sa, da), (sb, db) = read_checkpoint(a), read_checkpoint(b)
    if da != db or jax.tree.structure(sa) != jax.tree.structure(sb):
        return False
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)))


def all_finite(step_dir: pathlib.Path) -> bool:
    import jax

    state, _ = read_checkpoint(step_dir)
    return all(np.isfinite(x).all() for x in jax.tree.leaves(state) if np.issubdtype(x.dtype, np.floating))


def compare_workdirs(workdir: pathlib.Path, reference: pathlib.Path) -> dict:
    """Every complete checkpoint of `workdir` (latest and best) against the reference's same step. Those
    a preemption saved between the periodic ones have none to compare with (but the run went on from them)."""
    out = {"equal": 0, "different": [], "missing_in_reference": [], "preemption": [], "nonfinite": []}
    for sub in ("checkpoints", "best"):
        for step in committed(workdir / sub):
            mine, theirs = workdir / sub / str(step), reference / sub / str(step)
            if not theirs.is_dir():
                periodic = sub == "best" or step % RUN["train.checkpoint_every"] == 0
                out["missing_in_reference" if periodic else "preemption"].append(f"{sub}/{step}")
            elif same_checkpoint(mine, theirs):
                out["equal"] += 1
            else:
                out["different"].append(f"{sub}/{step}")
            if not all_finite(mine):
                out["nonfinite"].append(f"{sub}/{step}")
    return out


def corrupt_newest(workdir: pathlib.Path) -> list[int]:
    """Truncate the largest array file of the newest checkpoint and delete the metadata of the one before.
    Returns the corrupted steps (newest first); [] when fewer than three checkpoints exist."""
    steps = committed(workdir / "checkpoints")
    if len(steps) < 3:
        return []
    newest, second = (workdir / "checkpoints" / str(s) for s in steps[-1:-3:-1])
    biggest = max((p for p in (newest / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 3)
    (second / "meta" / "metadata").unlink()
    return [steps[-1], steps[-2]]


# ------------------------------------------------------------------------------------------- the kill campaign


@dataclasses.dataclass
class Interruption:
    """One planned fault: `kind` in KINDS, at `where` (a JAXLM_FAULT point:number, or '' for a full disk)."""

    kind: str
    where: str = ""

    def describe(self) -> str:
        return f"{self.kind} {self.where}".strip()


KINDS = {  # kind -> (JAXLM_FAULT action, expected exit status)
    "kill": ("kill", -signal.SIGKILL),
    "term": ("term", 0),  # SIGTERM sent by the process to itself at a fault point
    "sigterm": ("pause", 0),  # a real SIGTERM from this script, while the run waits at the point
    "sigint": ("pause", 130),  # Ctrl-C: finish the step, save, exit 130
    "sigint2": ("pause", 130),  # Ctrl-C twice: stop at once (a save in flight left unfinished)
    "ioerror": ("ioerror", 2),  # the n-th file orbax writes fails with ENOSPC
    "full-disk": ("", 2),  # RLIMIT_FSIZE below a checkpoint's size
}


SIGNALS = {"sigterm": (signal.SIGTERM,), "sigint": (signal.SIGINT,), "sigint2": (signal.SIGINT, signal.SIGINT)}
ANSWERS = {signal.SIGINT: "jaxlm: Ctrl-C: finishing the step"}  # what the run says when a signal is handled
KILL_POINTS = ("step", "save", "commit", "eval")
OTHER_FAULTS = ("sigterm", "term", "full-disk", "ioerror", "sigint", "sigint2")


def seeded_kinds(rng: random.Random, kills: int, others: int) -> list[str]:
    """`kills` SIGKILLs spread over the kill points in turn, and `others` other faults, in a seeded order."""
    kinds = [f"kill {KILL_POINTS[i % len(KILL_POINTS)]}" for i in range(kills)]
    kinds += [OTHER_FAULTS[i % len(OTHER_FAULTS)] for i in range(others)]
    rng.shuffle(kinds)
    return kinds


def plan_next(rng: random.Random, kind: str, progress: int, num_steps: int) -> Interruption | None:
    """A fault of `kind` at a seeded place that the next relaunch reaches: past `progress` (the newest
    complete checkpoint), and near it, so that many fit in one run. None: no such place is left."""
    every, eval_every = RUN["train.checkpoint_every"], RUN["train.eval_every"]
    ahead = list(range(progress + 1, min(num_steps, progress + 2 * every) + 1))
    saves = [s for s in range(progress + 1, num_steps + 1) if s % every == 0 or s == num_steps][:2]
    evals = [s for s in range(progress + 1, num_steps + 1) if s % eval_every == 0 or s == num_steps][:1]
    places = {"kill step": ahead, "kill save": saves, "kill commit": saves, "kill eval": evals, "term": ahead,
              "sigterm": ahead, "sigint": ahead, "sigint2": ahead, "ioerror": list(range(1, 25)),
              "full-disk": [0]}[kind]
    if not places:
        return None
    kind, _, point = kind.partition(" ")
    point = point or {"ioerror": "write", "full-disk": ""}.get(kind, "step")
    return Interruption(kind, f"{point}:{rng.choice(places)}" if point else "")


def interrupt(lab: Lab, argv: list[str], fault: Interruption) -> Launch:
    action, _ = KINDS[fault.kind]
    spec = f"{fault.where}:{action}" if fault.where else ""
    return lab.run(argv, fault=spec, file_size=FULL_DISK_BYTES if fault.kind == "full-disk" else None,
                   signals=SIGNALS.get(fault.kind, ()))


def check_interrupted(fault: Interruption, launch: Launch) -> list[str]:
    """What went wrong with an interrupted launch ([] if it failed exactly as it should)."""
    _, expected = KINDS[fault.kind]
    problems = []
    if launch.rc != expected:
        problems.append(f"exit status {launch.rc}, expected {expected}")
    if "Traceback" in launch.stderr and fault.kind != "kill" and expected != 2:
        problems.append("a traceback")
    if fault.kind in ("term", "sigterm") and launch.summary().get("stopped") != "preempted":
        problems.append("did not stop as preempted")
    if fault.kind == "sigint" and (launch.summary().get("stopped") != "interrupted" or not re.search(
            r"^jaxlm pretrain: interrupted at step \d+; its checkpoint is saved in .*: run the same command again "
            r"to resume$", launch.last_line)):
        problems.append(f"Ctrl-C: did not save and say how to resume; last line {launch.last_line[:200]!r}")
    if fault.kind == "sigint2" and "jaxlm: Ctrl-C again: stopped at once" not in launch.last_line:
        problems.append(f"Ctrl-C twice: did not stop at once; last line {launch.last_line[:200]!r}")
    # orbax and asyncio log the failed write's tracebacks (some at exit, after jaxlm's line): look for the line
    if expected == 2 and not re.search(r"^jaxlm pretrain: error: cannot write checkpoint \S+: .+ is intact$|"
                                       r"^jaxlm pretrain: error: cannot write checkpoint \S+: .+ none$",
                                       launch.stderr, re.MULTILINE):
        problems.append(f"no clear storage error line; last line {launch.last_line[:200]!r}")
    return problems


def campaign(lab: Lab, reference: pathlib.Path, workdir: pathlib.Path, num_steps: int, *,
             plan: list[Interruption] | None = None, kills: int = 0, others: int = 0, seed: int = 0,
             corrupt: bool = True, say=print) -> dict:
    """Interrupt the run in `workdir` per `plan` (or `kills` SIGKILLs and `others` other faults, seeded),
    relaunching after each; corrupt the newest checkpoints before the last relaunch; compare everything
    with `reference`."""
    rng = random.Random(seed)
    argv = lab.argv(workdir, **{"train.num_steps": num_steps})
    report = {"interruptions": [], "problems": [], "resumes": 0, "resumes_from_complete": 0, "unfinished_seen": 0,
              "corrupted": []}
    expected_resume = None
    kinds = seeded_kinds(rng, kills, others) if plan is None else []
    todo = list(plan) if plan is not None else None
    while True:
        progress = (committed(workdir / "checkpoints") or [0])[-1]
        if todo is not None:
            fault = todo.pop(0) if todo else None
        else:
            fault = None
            while kinds and fault is None and progress < num_steps:
                fault = plan_next(rng, kinds.pop(0), progress, num_steps)
        corrupted = []
        if fault is None and corrupt:
            corrupted = report["corrupted"] = corrupt_newest(workdir)
            if corrupted:
                expected_resume = committed(workdir / "checkpoints")[-3]
                say(f"  corrupted checkpoints {corrupted} (a truncated array file; a deleted metadata file)")
        launch = interrupt(lab, argv, fault) if fault else lab.run(argv)
        if expected_resume is not None or launch.resumed_from is not None:
            report["resumes"] += 1
            if launch.resumed_from == expected_resume:
                report["resumes_from_complete"] += 1
            else:
                report["problems"].append(f"resumed from {launch.resumed_from}, expected {expected_resume}")
        if corrupted:
            moved = sorted(p.name for p in (workdir / "unreadable").glob("checkpoints-*"))
            if moved != sorted(f"checkpoints-{s}" for s in corrupted):
                report["problems"].append(f"unreadable checkpoints set aside: {moved}, expected {corrupted}")
            for step in corrupted:
                if str(workdir / "checkpoints" / str(step)) not in launch.stderr:
                    report["problems"].append(f"the unreadable checkpoint {step} was not reported with its path")
        if fault is None:
            if launch.rc != 0:
                report["problems"].append(f"the final run failed ({launch.rc}): {launch.last_line[:300]}")
            say(f"  final run: exit {launch.rc}, resumed from step {launch.resumed_from} ({launch.seconds:.0f} s)")
            break
        problems = check_interrupted(fault, launch)
        left = unfinished(workdir)
        report["unfinished_seen"] += len(left)
        expected_resume = (committed(workdir / "checkpoints") or [None])[-1]
        report["interruptions"].append({"fault": fault.describe(), "exit": launch.rc,
                                        "resumed_from": launch.resumed_from,
                                        "complete_checkpoint": expected_resume, "unfinished": left})
        report["problems"] += [f"{fault.describe()}: {p}" for p in problems]
        say(f"  {len(report['interruptions']):2d}. {fault.describe():22s} exit {launch.rc:4d}; resumed from "
            f"{launch.resumed_from}; newest complete checkpoint {expected_resume}"
            + (f"; unfinished save left: {', '.join(left)}" if left else "") + f" ({launch.seconds:.0f} s)")
    if unfinished(workdir):
        report["problems"].append(f"unfinished saves left after the final run: {unfinished(workdir)}")
    if committed(workdir / "checkpoints")[-1:] != [num_steps]:
        report["problems"].append(f"no final checkpoint {num_steps}")
    report["compared"] = c = compare_workdirs(workdir, reference)
    report["final_equal"] = (workdir / "checkpoints" / str(num_steps)).is_dir() and \
        f"checkpoints/{num_steps}" not in c["different"]
    for key in ("different", "missing_in_reference", "nonfinite"):
        if c[key]:
            report["problems"].append(f"checkpoints {key.replace('_', ' ')}: {c[key]}")
    return report


# ------------------------------------------------------------------------------------------- divergence


def divergence(lab: Lab, reference: pathlib.Path, root: pathlib.Path, num_steps: int, nan_step: int) -> dict:
    """A NaN batch at `nan_step`: skipped and counted ('skip'); or the run stops there, exit 1, its state the
    last good one (the reference's state at nan_step - 1 with the step counted), nothing non-finite saved."""
    out = {"problems": []}
    skip = root / "nan-skip"
    launch = lab.run(lab.argv(skip, **{"train.num_steps": num_steps}), fault=f"batch:{nan_step}")
    records = [json.loads(line) for line in (skip / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r["split"] == "train"}
    if launch.rc != 0 or train.get(num_steps, {}).get("skipped_updates") != 1:
        out["problems"].append(f"skip: exit {launch.rc}, skipped {train.get(num_steps, {}).get('skipped_updates')}")
    for sub in ("checkpoints", "best"):
        for step in committed(skip / sub):
            if not all_finite(skip / sub / str(step)):
                out["problems"].append(f"skip: {sub}/{step} is not finite")
    out["skip_checkpoints_finite"] = len(committed(skip / "checkpoints")) + len(committed(skip / "best"))

    stop = root / "nan-stop"
    launch = lab.run(lab.argv(stop, **{"train.num_steps": num_steps, "train.on_nonfinite": "stop"}),
                     fault=f"batch:{nan_step}")
    saved = committed(stop / "checkpoints")
    if launch.rc != 1 or "non-finite" not in launch.last_line or saved[-1:] != [nan_step]:
        out["problems"].append(f"stop: exit {launch.rc}, checkpoints {saved}, last line {launch.last_line[:200]!r}")
    else:
        good, _ = read_checkpoint(reference / "checkpoints" / str(nan_step - 1))
        state, _ = read_checkpoint(stop / "checkpoints" / str(nan_step))
        same = all(np.array_equal(a, b) for a, b in zip(_leaves(good["params"]), _leaves(state["params"])))
        if not same or int(state["skipped"]) != 1 or int(state["step"]) != nan_step:
            out["problems"].append("stop: the saved state is not the last good one")
    return out


def two_runs_one_workdir(lab: Lab, reference: pathlib.Path, workdir: pathlib.Path, num_steps: int) -> dict:
    """Two runs launched together on one workdir (a relaunch while the first still runs): exactly one trains,
    its checkpoints bitwise the uninterrupted run's; the other stops at once, exit 2, one line naming the holder."""
    argv = lab.argv(workdir, **{"train.num_steps": num_steps})
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        launches = sorted(pool.map(lambda _: lab.run(argv), range(2)), key=lambda launch: launch.rc)
    out = {"problems": [], "exits": [launch.rc for launch in launches]}
    if out["exits"] != [0, 2]:
        out["problems"].append(f"two runs on one workdir: exits {out['exits']}, expected one 0 and one 2")
        return out
    winner, loser = launches
    out["seconds"] = [winner.seconds, loser.seconds]
    if not re.search(r"^jaxlm pretrain: error: --workdir \S+: in use by another run \(pid \d+ on \S+, started ",
                     loser.last_line):
        out["problems"].append(f"the second run's last line does not name the holder: {loser.last_line[:200]!r}")
    if loser.seconds > winner.seconds / 2:
        out["problems"].append(f"the second run did not stop at once ({loser.seconds:.0f} s, the run "
                               f"{winner.seconds:.0f} s)")
    out["compared"] = c = compare_workdirs(workdir, reference)
    if c["different"] or c["missing_in_reference"] or c["nonfinite"] or c["equal"] < len(committed(
            workdir / "checkpoints")) + len(committed(workdir / "best")):
        out["problems"].append(f"two runs on one workdir: checkpoints not the uninterrupted run's: {c}")
    return out


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


# ------------------------------------------------------------------------------------------- bad input


@dataclasses.dataclass
class Context:
    """What the bad-input cases refer to."""

    lab: Lab
    scratch: pathlib.Path  # for new workdirs
    trained: pathlib.Path  # a workdir holding a pretraining checkpoint
    small_tokenizer: pathlib.Path  # a tokenizer whose vocabulary is not the trained model's
    classification: pathlib.Path  # train/dev/test .tsv of a 3-class task; test unlabelled
    empty: pathlib.Path  # a train.tsv with a header and no rows
    floats: pathlib.Path  # train/dev .tsv whose labels are numbers with fractions (a regression target)

    @classmethod
    def make(cls, lab: Lab, scratch: pathlib.Path, trained: pathlib.Path) -> "Context":
        from jaxlm.data.tokenizer import train_tokenizer_from_dataset

        scratch.mkdir(parents=True, exist_ok=True)
        small = scratch / "small-tokenizer"
        if not (small / "spm.model").exists():
            train_tokenizer_from_dataset("embedded_corpus", vocab_size=600, out_dir=small, max_sentences=4000)
        task, empty = scratch / "task", scratch / "empty"
        task.mkdir(exist_ok=True)
        empty.mkdir(exist_ok=True)
        rows = ["a dog barks\tanimal", "a cat sleeps\tanimal", "the car drives\tthing", "a house stands\tthing",
                "the sun shines\tsky", "the moon rises\tsky"]
        (task / "train.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n")
        (task / "dev.tsv").write_text("text\tlabel\na bird sings\tanimal\nthe road\tthing\n")
        (task / "test.tsv").write_text("text\nsome text\nmore text\n")
        (empty / "train.tsv").write_text("text\tlabel\n")
        floats = scratch / "floats"
        floats.mkdir(exist_ok=True)
        for split in ("train", "dev"):
            (floats / f"{split}.tsv").write_text("text\tlabel\na dog barks\t0.5\na cat sleeps\t1.7\nthe sun\t-2\n")
        return cls(lab, scratch, trained, small, task, empty, floats)

    def pretrain(self, name: str, **fields) -> list[str]:
        return self.lab.argv(self.scratch / name, **{"train.num_steps": 4, **fields})

    def finetune(self, name: str, workdir: pathlib.Path | None = None, **fields) -> list[str]:
        fields = {"data.dataset": "local_classification", "data.path": str(self.classification),
                  "data.eval_split": "validation", "data.test_split": "", "data.buckets": "()",
                  "train.best_metric": "accuracy", "train.num_steps": 4, **fields}
        return self.lab.argv(workdir or self.scratch / name, command="finetune", variant="scratch", **fields)


BAD_INPUTS = {  # name -> (argv from a Context, words the one-line message must hold)
    "misspelt config field": (lambda c: c.pretrain("typo") + ["--config.optim.lerning_rate=1"],
                              ["config.optim.learning_rate"]),
    "unknown config variant": (lambda c: ["pretrain", "--config", f"{DEMO}:pretrian", "--workdir",
                                          str(c.scratch / "v")], ["unknown variant 'pretrian'"]),
    "unknown preset": (lambda c: c.pretrain("preset", **{"model.preset": "bert-huge"}),
                       ["unknown model preset 'bert-huge'", "bert-L2-H128"]),
    "unknown dataset": (lambda c: c.pretrain("dataset", **{"data.dataset": "no_such_corpus"}),
                        ["unknown dataset 'no_such_corpus'"]),
    "tokenizer vocabulary not the checkpoint's": (
        lambda c: c.pretrain("vocab", **{"model.init_from": f"jaxlm:{c.trained}",
                                         "data.tokenizer": str(c.small_tokenizer)}),
        ["the tokenizer has 600 tokens", "vocab_size=512"]),
    "sequence longer than the position embeddings": (lambda c: c.pretrain("long", **{"data.max_seq_length": 600}),
                                                     ["max_seq_length=600", "max_position_embeddings=128"]),
    "empty split": (lambda c: c.pretrain("empty-split", **{"data.train_split": "train[:0]"}),
                    ["split 'train[:0]' has no examples"]),
    "empty dataset file": (lambda c: c.finetune("empty-file", **{"data.path": str(c.empty)}),
                           ["{empty}/train.tsv has a header but no rows"]),
    "num_labels smaller than the labels": (lambda c: c.finetune("labels", **{"task.num_labels": 2}),
                                           ["num_labels=2", "3 classes"]),
    "regression on class labels": (lambda c: c.finetune("regression", **{"task.num_labels": 1}),
                                   ["label 'animal' is not a number"]),
    "unlabelled (-1) train split": (lambda c: c.finetune("unlabelled", **{"data.train_split": "test"}),
                                    ["split 'test'", "have no label"]),
    "unlabelled test split": (lambda c: c.finetune("unlabelled-test", **{"data.test_split": "test"}),
                              ["split 'test'", "have no label"]),
    "batch not divisible by data x fsdp": (lambda c: c.pretrain("batch", **{"data.batch_size": 15}),
                                           ["batch_size=15", "divisible"]),
    "batch size 0": (lambda c: c.pretrain("batch0", **{"data.batch_size": 0}),
                     ["config.data.batch_size=0: expected a positive number"]),
    "negative batch size": (lambda c: c.pretrain("batch-4", **{"data.batch_size": -4}),
                            ["config.data.batch_size=-4: expected a positive number"]),
    "config file with a syntax error": (lambda c: ["pretrain", "--config", str(c.scratch / "broken.py"), "--workdir",
                                                   str(c.scratch / "broken")], ["broken.py:2: ", "never closed"]),
    "fractional labels for classes": (lambda c: c.finetune("floats", **{"data.path": str(c.floats)}),
                                      ["label '0.5' is a number with a fraction", "--config.task.num_labels=1"]),
    "init_from a missing directory": (
        lambda c: c.finetune("init", **{"model.init_from": "hf:/nonexistent", "data.tokenizer": "init"}),
        ["config.model.init_from='hf:/nonexistent': no such directory"]),
    "workdir of another model": (lambda c: c.lab.argv(c.trained, **{"model.preset": "bert-L4-H128"}),
                                 ["its checkpoints were trained with model.preset='bert-L2-H128'",
                                  "this run has model.preset='bert-L4-H128'"]),
    "resumed with another learning rate": (
        lambda c: c.lab.argv(c.trained, **{"optim.learning_rate": 0.5}),
        ["its checkpoints were trained with optim.learning_rate=0.001", "this run has optim.learning_rate=0.5"]),
    "fine-tuning into a pretraining workdir": (lambda c: c.finetune("", workdir=c.trained),
                                               ["holds another experiment (task 'pretrain'", "not task 'classify'"]),
    "workdir is a file": (lambda c: c.pretrain("a-file"), ["not a directory"]),
    "a file where the checkpoint directory must be": (lambda c: c.pretrain("ckpt-file"),
                                                       ["cannot write checkpoints there", "not a directory"]),
}


def prepare_bad_input(name: str, ctx: Context) -> list[str]:
    """The argv of case `name`, after laying out the files it needs."""
    if name == "workdir is a file":
        (ctx.scratch / "a-file").write_text("not a workdir\n")
    if name == "config file with a syntax error":
        (ctx.scratch / "broken.py").write_text("def get_config():\n    return dict(a=1\n")
    if name == "a file where the checkpoint directory must be":
        (ctx.scratch / "ckpt-file").mkdir(exist_ok=True)
        (ctx.scratch / "ckpt-file" / "checkpoints").write_text("not a directory\n")
    return BAD_INPUTS[name][0](ctx)


def expected_words(name: str, ctx: Context) -> list[str]:
    return [w.replace("{empty}", str(ctx.empty)) for w in BAD_INPUTS[name][1]]


def check_bad_input(name: str, ctx: Context, rc: int, stderr: str) -> list[str]:
    """Problems with how the CLI answered case `name` ([] if one clear line and exit 2)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    problems = []
    if rc != 2:
        problems.append(f"exit {rc}")
    if "Traceback" in stderr:
        problems.append("a traceback")
    if not last.startswith("jaxlm ") or ": error: " not in last:
        problems.append(f"no one-line error: {last[:200]!r}")
    missing = [w for w in expected_words(name, ctx) if w not in last]
    if missing:
        problems.append(f"{missing} not in {last[:300]!r}")
    argv = BAD_INPUTS[name][0](ctx)
    workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
    if workdir.is_dir() and workdir != ctx.trained and list(workdir.glob("checkpoints/[0-9]*")):
        problems.append(f"refused only after training: {workdir}/checkpoints holds a checkpoint")
    return problems


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=12, help="SIGKILLs of the run (mid-step, -save, -commit, -evaluation)")
    p.add_argument("--others", type=int, default=6, help="other interruptions (SIGTERMs, full disk, failing writes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="/tmp/jaxlm-reliability", help="emptied first")
    args = p.parse_args(argv)
    root = pathlib.Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    lab = Lab(root)
    num_steps = max(24, 4 * (args.kills + args.others))
    problems = []

    print(f"reference: {num_steps} uninterrupted steps")
    reference = root / "reference"
    launch = lab.run(lab.argv(reference, **{"train.num_steps": num_steps}))
    if launch.rc != 0:
        print(launch.stderr[-3000:])
        return 1
    print(f"  exit 0 ({launch.seconds:.0f} s)")

    print(f"campaign: {args.kills} SIGKILLs and {args.others} other faults at seeded points (seed {args.seed}), "
          "then corruption of the newest checkpoints")
    report = campaign(lab, reference, root / "interrupted", num_steps, kills=args.kills, others=args.others,
                      seed=args.seed)
    problems += report["problems"]

    print("divergence: a NaN batch at step 9, on_nonfinite 'skip' then 'stop'")
    nan = divergence(lab, reference, root, 16, 9)
    problems += nan["problems"]

    print("two runs launched together on one workdir")
    two = two_runs_one_workdir(lab, reference, root / "two-runs", num_steps)
    problems += two["problems"]

    print(f"bad input: {len(BAD_INPUTS)} cases, each through the CLI in its own process")
    ctx = Context.make(lab, root / "bad-input", reference)
    bad_ok = 0
    for name in BAD_INPUTS:
        launch = lab.run(prepare_bad_input(name, ctx))
        found = check_bad_input(name, ctx, launch.rc, launch.stderr)
        bad_ok += not found
        problems += [f"bad input '{name}': {f}" for f in found]
        print(f"  {'ok ' if not found else 'BAD'} {name}: {launch.last_line[:150]}")

    kinds = [re.sub(r":\d+$", "", i["fault"]) for i in report["interruptions"]]
    c = report["compared"]
    print("\n--- reliability figures ---")
    print(f"interruptions survived:  {len(kinds)}: {', '.join(f'{k} x{kinds.count(k)}' for k in sorted(set(kinds)))}")
    print(f"  of which SIGKILLs:     {sum(k.startswith('kill') for k in kinds)}")
    print(f"relaunches:              {report['resumes'] + 1}; resumed from the newest complete checkpoint: "
          f"{report['resumes_from_complete']} of {report['resumes']}")
    print(f"unfinished saves found:  {report['unfinished_seen']} after interruptions; read: never; left at the end: "
          f"{len(unfinished(root / 'interrupted'))}")
    print(f"corrupted checkpoints:   {len(report['corrupted'])} (truncated file, missing metadata), reported with "
          f"their path and fallen back past")
    print(f"checkpoints compared:    {c['equal']} bitwise equal to the uninterrupted run's (latest and best), "
          f"{len(c['different'])} different, {len(c['nonfinite'])} non-finite; {len(c['preemption'])} preemption "
          f"checkpoints had no counterpart")
    print(f"final parameters:        {'bitwise equal' if report['final_equal'] else 'NOT equal'} to the uninterrupted run's")
    print(f"divergence:              NaN batch skipped and counted; 'stop' exits 1 at the last good state: "
          f"{'ok' if not nan['problems'] else 'FAILED'}")
    print(f"one workdir, two runs:   exits {two['exits']}; "
          + (f"the second stopped in {two['seconds'][1]:.0f} s, naming the holder; the first's checkpoints bitwise "
             "the uninterrupted run's" if not two["problems"] else "FAILED"))
    print(f"bad inputs tried:        {len(BAD_INPUTS)}; one line and exit 2: {bad_ok}")
    print(f"faults injected:         {len(kinds) + len(report['corrupted']) + 2 + len(BAD_INPUTS)} "
          f"(interruptions, corruptions, NaN batches, bad inputs); processes: {lab.launches}; "
          f"time: {time.perf_counter() - started:.0f} s")
    if problems:
        print("\nPROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    print("nothing was lost: the interrupted run ended bitwise equal to the uninterrupted one")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
