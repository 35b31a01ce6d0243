"""tpu/tpu.py against a fake `gcloud` on PATH that records its calls, keeps a VM's state, and preempts it."""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile

REPO = pathlib.Path(__file__).parents[1]
TPU = [sys.executable, str(REPO / "tpu" / "tpu.py")]
WHERE = ["--name", "t1", "--zone", "us-west4-a", "--project", "proj"]
JAXLM = ["pretrain", "--config", "experiments/demo_cpu.py", "--workdir", "/gcs/bkt/r1"]

# The fake: $FAKE/calls.jsonl gets each call's arguments. The VM's state lives in $FAKE/vm (absent: none),
# its incarnation in $FAKE/lives. In the first life, the VM is preempted at its 2nd describe; a life's run
# reports `running` once, then what $FAKE_RUN_ENDS says ('0', or '0 preempted' once then '0').
FAKE_GCLOUD = r'''#!/usr/bin/env python3
import json, os, pathlib, shutil, sys
fake = pathlib.Path(os.environ["FAKE"])
args = sys.argv[1:]
with open(fake / "calls.jsonl", "a") as f:
    f.write(json.dumps(args) + "\n")
vm, lives = fake / "vm", fake / "lives"
def count(name):
    path = fake / name
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n
verb = args[3] if args[:2] == ["compute", "tpus"] else args[1]
if args[2:4] == ["tpu-vm", "create"] or args[2:4] == ["queued-resources", "create"]:
    if vm.exists():
        sys.exit("ERROR: already exists")
    vm.write_text("READY")
    count("lives")
    for name in ("describes", "statuses"):
        (fake / name).unlink(missing_ok=True)
elif args[2:4] == ["queued-resources", "describe"]:
    print("WAITING_FOR_RESOURCES" if count("queued") == 1 else "ACTIVE")
elif verb == "delete":
    vm.unlink()
elif verb == "describe":
    if not vm.exists():
        sys.exit("ERROR: NOT_FOUND")
    if lives.read_text() == "1" and count("describes") == 2:
        vm.write_text("PREEMPTED")
    print(vm.read_text())
elif verb == "ssh":
    command = next(a for a in args if a.startswith("--command="))
    if "cat ~/runs/" in command:
        if count("statuses") == 1:
            print("running")
        else:
            ends = os.environ["FAKE_RUN_ENDS"].split(",")
            print(ends[min(count("ends"), len(ends)) - 1])
elif verb == "scp" and args[4].endswith("jaxlm.tgz"):
    shutil.copy(args[4], fake / "jaxlm.tgz")
elif args[:2] == ["storage", "cp"]:
    pathlib.Path(args[-1], "r1").mkdir(parents=True)
'''


def _fake(tmp_path, run_ends="0"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE": str(tmp_path),
           "FAKE_RUN_ENDS": run_ends}
    return env


def _calls(tmp_path) -> list[list[str]]:
    path = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _verbs(calls) -> list[str]:
    out = []
    for c in calls:
        if c[:2] == ["storage", "cp"]:
            out.append("storage cp")
        elif c[3] == "ssh":
            command = next(a for a in c if a.startswith("--command="))
            kind = "status" if "cat ~/runs/" in command else "launch" if "nohup" in command else \
                "mount" if "gcsfuse" in command else "setup"
            out.append(f"ssh {kind}")
        else:
            out.append(f"{c[2]} {c[3]}")
    return out


def test_up_survives_a_preemption_and_copies_the_results(tmp_path):
    env = _fake(tmp_path)
    args = ["up", *WHERE, "--accelerator", "v5litepod-16", "--spot", "--bucket", "gs://bkt", "--run", "r1",
            "--workdir", "/gcs/bkt/r1", "--to", str(tmp_path / "results"), "--interval", "0", "--delete-after",
            "--", *JAXLM]
    done = subprocess.run(TPU + args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = _calls(tmp_path)
    life = ["tpu-vm create", "tpu-vm scp", "ssh setup", "ssh mount", "ssh launch"]
    assert _verbs(calls) == [
        "tpu-vm describe", *life, "tpu-vm describe", "ssh status",  # up: none yet; created; running
        "tpu-vm describe", "tpu-vm delete", *life,  # preempted: deleted, created again, relaunched
        "tpu-vm describe", "ssh status", "tpu-vm describe", "ssh status",  # running, then done
        "storage cp", "tpu-vm scp", "tpu-vm delete",
    ]
    assert "preempted" in done.stderr and "resumes from its checkpoint" in done.stderr
    create = calls[1]
    assert create[4:] == ["t1", "--zone=us-west4-a", "--project=proj", "--accelerator-type=v5litepod-16",
                          "--version=v2-alpha-tpuv5-lite", "--spot"]
    launches = [c for c, v in zip(calls, _verbs(calls)) if v == "ssh launch"]
    assert len(launches) == 2 and launches[0] == launches[1]
    assert "--worker=all" in launches[0]
    assert ".venv/bin/jaxlm pretrain --config experiments/demo_cpu.py --workdir /gcs/bkt/r1 >> ~/runs/r1.log" \
        in launches[0][-1]
    assert calls[-3] == ["storage", "cp", "-r", "gs://bkt/r1", str(tmp_path / "results")]
    assert (tmp_path / "results" / "r1").is_dir()
    with tarfile.open(tmp_path / "jaxlm.tgz") as tar:  # what setup shipped: this checkout
        names = set(tar.getnames())
    assert {"jaxlm/train.py", "tpu/tpu.py", "pyproject.toml"} <= names and not any(".venv" in n for n in names)


def test_watch_relaunches_a_run_stopped_on_a_live_vm_and_reports_a_crash(tmp_path):
    env = _fake(tmp_path, run_ends="0 preempted,0")
    (tmp_path / "vm").write_text("READY")
    (tmp_path / "lives").write_text("2")  # a VM that is not preempted
    args = ["watch", *WHERE, "--run", "r1", "--interval", "0", "--", *JAXLM]
    done = subprocess.run(TPU + args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _verbs(_calls(tmp_path)) == ["tpu-vm describe", "ssh status", "tpu-vm describe", "ssh status",
                                        "ssh launch", "tpu-vm describe", "ssh status"]

    env["FAKE_RUN_ENDS"] = "1"
    (tmp_path / "calls.jsonl").unlink()
    (tmp_path / "statuses").unlink()
    done = subprocess.run(TPU + args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "run r1: failed 1" in done.stderr


def test_queued_spot_resource_waits_for_capacity(tmp_path):
    env = _fake(tmp_path)
    args = ["create", *WHERE, "--accelerator", "v4-32", "--queued", "--spot", "--valid-for", "6h", "--interval", "0"]
    done = subprocess.run(TPU + args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = _calls(tmp_path)
    assert calls[0] == ["compute", "tpus", "queued-resources", "create", "t1", "--node-id=t1", "--zone=us-west4-a",
                        "--project=proj", "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base",
                        "--spot", "--valid-until-duration=6h"]
    assert [c[3] for c in calls[1:]] == ["describe", "describe"]  # waiting, then active


def test_dry_run_prints_the_gcloud_commands_and_runs_none(tmp_path):
    env = _fake(tmp_path)
    args = ["up", *WHERE, "--accelerator", "v6e-8", "--run", "r1", "--dry-run", "--", *JAXLM]
    done = subprocess.run(TPU + args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "calls.jsonl").exists()
    printed = [line for line in done.stdout.splitlines() if line.startswith("gcloud ")]
    assert printed[0] == ("gcloud compute tpus tpu-vm create t1 --zone=us-west4-a --project=proj "
                          "--accelerator-type=v6e-8 --version=v2-alpha-tpuv6e")
    assert any(" ssh t1 " in line and "--worker=all" in line for line in printed)
    for command in ("create", "setup", "launch", "logs", "copy", "delete", "watch"):
        extra = {"create": ["--accelerator", "v4-8"], "launch": ["--run", "r", "--", "pretrain"],
                 "logs": ["--run", "r"], "copy": ["--run", "r", "--workdir", "gs://b/r"],
                 "watch": ["--run", "r", "--", "pretrain"]}.get(command, [])
        done = subprocess.run(TPU + [command, *WHERE, "--dry-run", *extra], env=env, capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stderr)
        assert any(line.startswith("gcloud compute tpus ") for line in done.stdout.splitlines()), command
    assert not (tmp_path / "calls.jsonl").exists()
    flags = "--xla_tpu_enable_async_collective_fusion=true --xla_enable_async_all_gather=true"
    done = subprocess.run(TPU + ["launch", *WHERE, "--dry-run", "--run", "r", "--xla-flags", flags, "--", "pretrain"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (ssh,) = [line for line in done.stdout.splitlines() if " ssh t1 " in line]
    remote = shlex.split(next(a for a in shlex.split(ssh) if a.startswith("--command=")).removeprefix("--command="))
    job = shlex.split(remote[remote.index("-c") + 1])  # what runs on every worker
    assert job[job.index(".venv/bin/jaxlm") - 1:][:3] == [f"LIBTPU_INIT_ARGS={flags}", ".venv/bin/jaxlm", "pretrain"]


def test_unknown_generation_needs_a_version(tmp_path):
    done = subprocess.run(TPU + ["create", *WHERE, "--accelerator", "v9x-8", "--dry-run"], capture_output=True,
                          text=True)
    assert done.returncode == 1 and "give --version" in done.stderr
