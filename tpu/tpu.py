#!/usr/bin/env python3
"""TPU VMs and pod slices for jaxlm, through `gcloud`: create, set up, launch, follow, babysit, copy, delete.

    python tpu/tpu.py create --name N --zone Z --project P --accelerator v5litepod-16 [--spot] [--queued]
    python tpu/tpu.py setup  --name N --zone Z --project P [--bucket B]     # jaxlm on every worker
    python tpu/tpu.py launch --name N --zone Z --project P --run R -- pretrain --config ... --workdir gs://B/R
    python tpu/tpu.py logs   --name N --zone Z --project P --run R [--follow] [--worker 0]
    python tpu/tpu.py watch  --name N ... --accelerator ... --run R -- ...  # relaunch after a preemption
    python tpu/tpu.py copy   --name N --zone Z --project P --run R --workdir gs://B/R --to DIR
    python tpu/tpu.py delete --name N --zone Z --project P [--queued]
    python tpu/tpu.py up     (create + setup + launch + watch + copy [+ delete with --delete-after])

Every command takes --dry-run: it prints the exact gcloud commands and runs nothing. Only the Python
standard library and the gcloud CLI are needed on the machine you launch from.

The run is `jaxlm ARGS...` started on every worker in the background (`nohup`, its own session), its output
in ~/runs/R.log on each worker and its exit status in ~/runs/R.exit. jaxlm joins the workers itself
(jax.distributed finds them on a TPU VM). Its workdir must outlive the VM: gs://BUCKET/RUN, which jaxlm writes
itself, or /gcs/BUCKET/RUN, where `setup --bucket` mounts it with gcsfuse on every worker (what a sweep needs). A spot or preemptible slice that is preempted is deleted
and created again by `watch`, set up, and the same command launched: jaxlm resumes from the workdir's last
checkpoint. A run stopped by SIGTERM on a live VM (maintenance) is launched again in place.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# TPU VM software image by generation (the prefix of the accelerator type); --version overrides it.
RUNTIME = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
           "v6e": "v2-alpha-tpuv6e"}
LIVE, GONE = {"READY"}, {"PREEMPTED", "TERMINATED", "NOT_FOUND", "SUSPENDED", "FAILED"}
SETUP = """set -e
sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base fortunes > /dev/null
rm -rf ~/jaxlm && mkdir -p ~/jaxlm ~/runs && tar xzf ~/jaxlm.tgz -C ~/jaxlm && cd ~/jaxlm
python3 -m pip install -q --user uv
~/.local/bin/uv venv -q --python 3.11 --allow-existing .venv
~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[tpu]'
"""
MOUNT = """set -e
if ! command -v gcsfuse > /dev/null; then
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list > /dev/null
  curl -fsS https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null
  sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcsfuse > /dev/null
fi
sudo mkdir -p /gcs/{bucket} && sudo chown "$USER" /gcs/{bucket}
mountpoint -q /gcs/{bucket} || gcsfuse --implicit-dirs {bucket} /gcs/{bucket}
"""


class Gcloud:
    """Runs gcloud commands, or with dry_run prints them (a query then gets `dry_answer`: a live, busy VM)."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def __call__(self, *args: str, check: bool = True, capture: bool = False, dry_answer: str = ""
                 ) -> subprocess.CompletedProcess:
        command = ["gcloud", *args]
        if self.dry_run:
            print(shlex.join(command), flush=True)
            return subprocess.CompletedProcess(command, 0, stdout=dry_answer)
        print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
        result = subprocess.run(command, text=True, capture_output=capture)
        if check and result.returncode:
            detail = f": {result.stderr.strip()[-500:]}" if capture and result.stderr else ""
            raise SystemExit(f"tpu.py: `{shlex.join(command)}` failed with exit {result.returncode}{detail}")
        return result


class Slice:
    """One TPU VM or pod slice, and what gcloud needs to name it."""

    def __init__(self, args, gcloud: Gcloud):
        self.args, self.gcloud = args, gcloud
        self.where = [f"--zone={args.zone}", f"--project={args.project}"]

    # ------------------------------------------------------------------ lifecycle

    def create(self) -> None:
        a = self.args
        if not a.accelerator:
            raise SystemExit("tpu.py: --accelerator is needed to create a slice (e.g. v5litepod-16, v4-32)")
        generation = a.accelerator.rsplit("-", 1)[0]
        version = a.version or RUNTIME.get(generation)
        if version is None:
            raise SystemExit(f"tpu.py: --accelerator {a.accelerator}: no default runtime for {generation!r}; "
                             f"give --version (defaults known for {', '.join(RUNTIME)})")
        if a.queued:
            self.gcloud("compute", "tpus", "queued-resources", "create", a.name, f"--node-id={a.name}", *self.where,
                        f"--accelerator-type={a.accelerator}", f"--runtime-version={version}",
                        *(["--spot"] if a.spot else []), *([f"--valid-until-duration={a.valid_for}"] if a.valid_for else []))
            self._wait_queued()
        else:
            self.gcloud("compute", "tpus", "tpu-vm", "create", a.name, *self.where,
                        f"--accelerator-type={a.accelerator}", f"--version={version}",
                        *(["--spot"] if a.spot else []), *(["--preemptible"] if a.preemptible else []))

    def _wait_queued(self) -> None:
        """A queued resource waits for capacity: poll until ACTIVE (its VM then exists)."""
        while True:
            state = self.gcloud("compute", "tpus", "queued-resources", "describe", self.args.name, *self.where,
                                "--format=value(state.state)", capture=True, dry_answer="ACTIVE").stdout.split()
            state = state[0] if state else "UNKNOWN"
            if state == "ACTIVE":
                return
            if state in ("FAILED", "SUSPENDED"):
                raise SystemExit(f"tpu.py: queued resource {self.args.name} is {state}")
            print(f"queued resource {self.args.name}: {state}; waiting", file=sys.stderr, flush=True)
            time.sleep(self.args.interval)

    def state(self) -> str:
        """READY, CREATING, PREEMPTED, ... of the VM; NOT_FOUND when there is none."""
        result = self.gcloud("compute", "tpus", "tpu-vm", "describe", self.args.name, *self.where,
                             "--format=value(state)", check=False, capture=True, dry_answer="READY")
        return (result.stdout.split() or ["NOT_FOUND"])[0] if result.returncode == 0 else "NOT_FOUND"

    def delete(self) -> None:
        a = self.args
        if a.queued:
            self.gcloud("compute", "tpus", "queued-resources", "delete", a.name, *self.where, "--force", "--quiet")
        else:
            self.gcloud("compute", "tpus", "tpu-vm", "delete", a.name, *self.where, "--quiet")

    # ------------------------------------------------------------------ on the workers

    def ssh(self, command: str, worker: str = "all", **kwargs):
        return self.gcloud("compute", "tpus", "tpu-vm", "ssh", self.args.name, *self.where, f"--worker={worker}",
                           f"--command={command}", **kwargs)

    def setup(self) -> None:
        """This checkout (tracked and untracked, not ignored files) on every worker, installed with libtpu."""
        with tempfile.TemporaryDirectory() as tmp:
            archive = pathlib.Path(tmp) / "jaxlm.tgz"
            if self.gcloud.dry_run:
                print(f"# {archive}: a tar of this checkout's files (git ls-files -co --exclude-standard)")
            else:
                _archive_checkout(archive)
            self.gcloud("compute", "tpus", "tpu-vm", "scp", str(archive), f"{self.args.name}:~/jaxlm.tgz",
                        *self.where, "--worker=all")
        self.ssh(SETUP)
        if self.args.bucket:
            self.ssh(MOUNT.format(bucket=self.args.bucket.removeprefix("gs://").strip("/")))

    def launch(self, jaxlm_args: list[str]) -> None:
        if not jaxlm_args:
            raise SystemExit("tpu.py: give the jaxlm command after --, e.g. -- pretrain --config ... --workdir ...")
        run = self.args.run
        flags = f"LIBTPU_INIT_ARGS={shlex.quote(self.args.xla_flags)} " if self.args.xla_flags else ""
        job = (f"cd ~/jaxlm && PYTHONUNBUFFERED=1 {flags}.venv/bin/jaxlm {shlex.join(jaxlm_args)} >> ~/runs/{run}.log "
               f"2>&1; echo $? > ~/runs/{run}.exit")
        self.ssh(f"mkdir -p ~/runs && rm -f ~/runs/{run}.exit && "
                 f"(setsid nohup bash -c {shlex.quote(job)} > /dev/null 2>&1 < /dev/null &)")

    def run_status(self) -> str:
        """'running', 'done', 'preempted' (stopped by SIGTERM on a live VM) or 'failed N' on worker 0."""
        run = self.args.run
        out = self.ssh(f"cat ~/runs/{run}.exit 2>/dev/null || echo running; "
                       f"tail -n 60 ~/runs/{run}.log 2>/dev/null | grep -q '\"stopped\": \"preempted\"' && echo preempted",
                       worker="0", capture=True, check=False, dry_answer="running").stdout.split()
        if not out or out[0] == "running":
            return "running"
        if out[0] == "0":
            return "preempted" if "preempted" in out[1:] else "done"
        return f"failed {out[0]}"

    def logs(self, follow: bool, lines: int) -> None:
        self.ssh(f"tail -n {lines} {'-F ' if follow else ''}~/runs/{self.args.run}.log", worker=self.args.worker)

    def copy(self, workdir: str, to: str) -> None:
        """The workdir (from the bucket) and worker 0's log into `to`."""
        if workdir.startswith("/gcs/"):
            workdir = "gs://" + workdir.removeprefix("/gcs/")
        self.gcloud("storage", "cp", "-r", workdir, to)
        self.gcloud("compute", "tpus", "tpu-vm", "scp", f"{self.args.name}:~/runs/{self.args.run}.log", to,
                    *self.where, "--worker=0")

    # ------------------------------------------------------------------ babysitting

    def watch(self, jaxlm_args: list[str]) -> int:
        """Until the run ends: relaunch after a preemption (recreating a lost slice). 0 when the run is done."""
        restarts = 0
        while True:
            state = self.state()
            if state in GONE:
                restarts = self._restart(restarts, f"the slice is {state}")
                if state != "NOT_FOUND":
                    self.delete()
                self.create()
                self.setup()
                self.launch(jaxlm_args)
            elif state in LIVE:
                status = self.run_status()
                if status == "done":
                    print(f"run {self.args.run}: done", flush=True)
                    return 0
                if status == "preempted":
                    restarts = self._restart(restarts, "the run was stopped by SIGTERM")
                    self.launch(jaxlm_args)
                elif status.startswith("failed"):
                    print(f"run {self.args.run}: {status}; see `python tpu/tpu.py logs ... --run {self.args.run}`",
                          file=sys.stderr, flush=True)
                    return 1
            if self.gcloud.dry_run:
                print("# ... every --interval seconds until the run is done; when the slice is preempted: delete,\n"
                      "# create, setup and launch as above; when the run alone was stopped (SIGTERM): launch again")
                return 0
            time.sleep(self.args.interval)

    def _restart(self, restarts: int, why: str) -> int:
        if restarts >= self.args.max_restarts:
            raise SystemExit(f"tpu.py: {why}, and {restarts} restarts are --max-restarts; giving up")
        print(f"run {self.args.run}: {why}; relaunching (restart {restarts + 1}), it resumes from its checkpoint",
              file=sys.stderr, flush=True)
        return restarts + 1


def _archive_checkout(path: pathlib.Path) -> None:
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    with tarfile.open(path, "w:gz") as tar:
        for name in filter(None, files):
            if (REPO / name).is_file():
                tar.add(REPO / name, arcname=name)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--name", required=True, help="the TPU VM (or queued resource) name")
    common.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-a (v5p)")
    common.add_argument("--project", required=True)
    common.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    common.add_argument("--interval", type=float, default=60, help="seconds between status checks")
    slice_ = argparse.ArgumentParser(add_help=False)
    slice_.add_argument("--accelerator", help="gcloud accelerator type: v4-32, v5litepod-16, v5p-64, v6e-8, ...")
    slice_.add_argument("--version", help=f"TPU software image (default by generation: {RUNTIME})")
    kind = slice_.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="spot capacity: cheaper, may be preempted")
    kind.add_argument("--preemptible", action="store_true", help="legacy preemptible VM (v4 and older)")
    slice_.add_argument("--queued", action="store_true", help="a queued resource: waits for capacity")
    slice_.add_argument("--valid-for", help="queued: give up waiting after this long (e.g. 6h)")
    slice_.add_argument("--bucket", help="a Cloud Storage bucket mounted at /gcs/BUCKET on every worker")
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--run", required=True, help="the run's name: ~/runs/RUN.log on every worker")
    run.add_argument("--xla-flags", default="", help="LIBTPU_INIT_ARGS of the run, e.g. the TPU flags that "
                                                     "experiments/bert_base_wikipedia.py lists")
    p = argparse.ArgumentParser(prog="tpu.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("create", parents=[common, slice_], help="create the TPU VM or slice")
    sub.add_parser("setup", parents=[common, slice_], help="install this checkout of jaxlm on every worker")
    sub.add_parser("launch", parents=[common, run], help="start `jaxlm ARGS` on every worker, in the background")
    s = sub.add_parser("logs", parents=[common, run], help="the run's log on one worker")
    s.add_argument("--follow", action="store_true")
    s.add_argument("--lines", type=int, default=100)
    s.add_argument("--worker", default="0")
    for name in ("watch", "up"):
        s = sub.add_parser(name, parents=[common, slice_, run], help="relaunch after preemption until the run ends"
                           if name == "watch" else "create, set up, launch, watch, copy the results")
        s.add_argument("--max-restarts", type=int, default=20)
    s.add_argument("--workdir", help="the run's workdir (gs://B/... or /gcs/B/...), copied when it ends")
    s.add_argument("--to", default="results", help="where results are copied")
    s.add_argument("--delete-after", action="store_true", help="delete the slice when the run is done")
    s = sub.add_parser("copy", parents=[common, run], help="copy the workdir and worker 0's log here")
    s.add_argument("--workdir", required=True)
    s.add_argument("--to", default="results")
    s = sub.add_parser("delete", parents=[common], help="delete the TPU VM or slice")
    s.add_argument("--queued", action="store_true", help="it was created as a queued resource")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args, jaxlm_args = _parser().parse_args(argv[:cut]), argv[cut + 1:]
    tpu = Slice(args, Gcloud(args.dry_run))
    if args.command == "create":
        tpu.create()
    elif args.command == "setup":
        tpu.setup()
    elif args.command == "launch":
        tpu.launch(jaxlm_args)
    elif args.command == "logs":
        tpu.logs(args.follow, args.lines)
    elif args.command == "watch":
        return tpu.watch(jaxlm_args)
    elif args.command == "up":
        if args.dry_run or tpu.state() == "NOT_FOUND":
            tpu.create()
        tpu.setup()
        tpu.launch(jaxlm_args)
        code = tpu.watch(jaxlm_args)
        if code == 0 and args.workdir:
            tpu.copy(args.workdir, args.to)
        if code == 0 and args.delete_after:
            tpu.delete()
        return code
    elif args.command == "copy":
        tpu.copy(args.workdir, args.to)
    elif args.command == "delete":
        tpu.delete()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
    sys.exit(main())
