"""A training workdir's guard: one run at a time holds it, and its record stays the run its checkpoints hold.

    with workdir.hold(path):                      # a second run on `path` stops at once, naming the holder
        changes = workdir.check_resume(config, path)   # settings that differ from the checkpoints' are refused
        ...
        workdir.record_start(path, config)            # a fresh run: run.json
        workdir.record_resume(path, config, step, changes)   # a resume: appended to run.json, never rewritten

The lock is `fcntl.flock` on `<workdir>/run.lock`, taken by process 0 of a multi-host run: the kernel releases it
when its holder dies, however it dies (a SIGKILLed run never blocks its relaunch). The file keeps the holder's
host, pid, start time and command, for the message the next run prints. On gs:// (no flock there) the lock is a
lease: an object created only if absent, renewed by its holder every LEASE_S / 4 and deleted at the end; one
a killed run leaves is taken over LEASE_S after its last renewal. Readers (`evaluate`, `predict`,
`convert --to-hf`) take no lock: orbax makes a checkpoint a step only when it is complete, so they read the
newest complete one while a run writes the next.

A resume takes the settings its checkpoints were trained with (config.json of the first launch, never rewritten).
Those in RESUMABLE may change (how long, how often, on which devices, how it runs), each change recorded in
run.json with its step; any other differing field is refused, naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import platform
import secrets
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

from etils import epath

from jaxlm import distributed, storage

log = logging.getLogger(__name__)

LOCK = "run.lock"
LEASE_S = 60.0  # a gs:// workdir's lock object not renewed for this long is free (its run died)
# Fields a resumed run may change: its length, its periodic actions, the devices and how the model runs on them,
# and where the same data lives. Anything else (data, task, model, optimizer, seed, dtype) is the run itself.
RESUMABLE = ("config_file", "train.num_steps", "train.num_epochs", "train.stop_after", "train.log_every",
             "train.eval_every", "train.checkpoint_every", "train.keep", "train.on_nonfinite", "train.profile_start",
             "train.profile_steps", "train.wandb_project", "data.eval_split", "data.test_split",
             "data.eval_batch_size", "data.data_dir", "data.workers", "model.attention", "model.remat", "mesh.")


class WorkdirInUse(ValueError):
    """Another run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: epath.Path) -> Iterator[None]:
    """Hold `workdir` for the duration: WorkdirInUse at once if another run holds it."""
    import jax

    release, busy = None, None
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "command": " ".join(sys.argv)}
        release, busy = (_lease if storage.is_remote(workdir) else _flock)(workdir / LOCK, me)
    if not distributed.all_agree(busy is None):
        raise WorkdirInUse(f"--workdir {workdir}: in use by another run ({busy or 'process 0 cannot lock it'}); "
                           "wait for it to end or stop it, or use another --workdir")
    try:
        yield
    finally:
        if release is not None:
            release()


def _flock(lock: epath.Path, me: dict) -> tuple[Callable[[], None] | None, str | None]:
    """(release, None) holding `lock` with flock, or (None, who holds it)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        busy = _describe(os.pread(fd, 4096, 0))
        os.close(fd)
        return None, busy
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)

    def release():
        os.ftruncate(fd, 0)  # (a stale holder is never named; the lock itself dies with the process)
        os.close(fd)

    return release, None


def _lease(lock: epath.Path, me: dict) -> tuple[Callable[[], None] | None, str | None]:
    """(release, None) holding the lease object `lock` on GCS, or (None, who holds it).

    The object is created only if absent (generation precondition 0), renewed every LEASE_S / 4 by a thread, each
    renewal conditional on the generation this run wrote last, and deleted at the end. A lease not renewed for
    LEASE_S (its holder died) is taken over, conditionally on its generation: of two runs taking it, one wins."""
    from google.api_core import exceptions
    from google.cloud import storage as gcs

    bucket, name = storage.bucket_and_name(lock)
    blob = gcs.Client().bucket(bucket).blob(name)

    def put(generation: int) -> int:
        blob.upload_from_string(json.dumps({**me, "renewed": time.time()}), if_generation_match=generation)
        return blob.generation

    try:
        generation = put(0)
    except exceptions.PreconditionFailed:
        held = blob.bucket.get_blob(name)
        text = held.download_as_bytes() if held is not None else b""
        try:
            age = time.time() - json.loads(text)["renewed"]
        except (ValueError, KeyError):  # not a lease jaxlm wrote: its age is the object's
            age = time.time() - held.updated.timestamp() if held is not None and held.updated else 0.0
        if held is not None and age < LEASE_S:
            return None, f"{_describe(text)}; its lease {lock} was renewed {age:.0f} s ago"
        try:
            generation = put(held.generation if held is not None else 0)
            log.warning("took over the workdir lock %s, not renewed for %.0f s (its run died)", lock, age)
        except exceptions.PreconditionFailed:
            return None, "another run took over its lapsed lease just now"
    stop = threading.Event()

    def renew():
        nonlocal generation
        while not stop.wait(LEASE_S / 4):
            try:
                generation = put(generation)
            except Exception as e:  # noqa: BLE001 - the run goes on; the next renewal tries again
                log.error("cannot renew the workdir lock %s: %s", lock, e)

    renewer = threading.Thread(target=renew, name="jaxlm-workdir-lease", daemon=True)
    renewer.start()

    def release():
        stop.set()
        renewer.join()
        with contextlib.suppress(exceptions.GoogleAPICallError):
            blob.delete(if_generation_match=generation)

    return release, None


def _describe(holder: bytes) -> str:
    try:
        h = json.loads(holder.decode())
        return f"pid {h['pid']} on {h['host']}, started {h['started']}: {h['command']}"
    except (ValueError, KeyError):
        return "starting"  # it holds the lock, and has not written who it is yet


# ------------------------------------------------------------------------------------------- the record


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key != "overrides":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _as_saved(config) -> dict[str, Any]:
    return _flat(json.loads(config.to_json_best_effort()))


def check_resume(config, workdir: epath.Path) -> dict[str, list]:
    """{field: [saved, now]} of the resumable settings this run changes, when `workdir` holds checkpoints of an
    earlier launch ({} when it holds none). Another experiment (task, data) or other settings are refused with
    the fields named. Fields the saved config lacks (added to jaxlm since) are not compared."""
    saved_file = workdir / "config.json"
    if not saved_file.is_file() or not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
        return {}
    saved, now = _flat(json.loads(saved_file.read_text())), _as_saved(config)
    if (saved.get("task.name"), saved.get("data.dataset")) != (now["task.name"], now["data.dataset"]):
        raise ValueError(
            f"--workdir {workdir}: holds another experiment (task {saved.get('task.name')!r} on "
            f"{saved.get('data.dataset')!r}, per {saved_file}), not task {now['task.name']!r} on "
            f"{now['data.dataset']!r}; use a new --workdir (or start from it with model.init_from='jaxlm:{workdir}')")
    differ = {k: [saved[k], now[k]] for k in saved.keys() & now.keys() if saved[k] != now[k]}
    fixed = sorted(k for k in differ if not k.startswith(RESUMABLE))
    if fixed:
        raise ValueError(
            f"--workdir {workdir}: its checkpoints were trained with "
            + ", ".join(f"{k}={differ[k][0]!r}" for k in fixed) + f" ({saved_file}); this run has "
            + ", ".join(f"{k}={differ[k][1]!r}" for k in fixed)
            + ": resume with the saved settings, or train in a new --workdir")
    return dict(sorted(differ.items()))


def run_info(config) -> dict:
    """The config, the git commit, the versions of the libraries and the devices of this launch."""
    import flax
    import jax
    import optax
    import orbax.checkpoint

    import jaxlm

    try:
        root = pathlib.Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": {"jaxlm": jaxlm.__version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
                     "orbax-checkpoint": orbax.checkpoint.__version__, "python": platform.python_version()},
        "devices": {"count": jax.device_count(), "kind": jax.devices()[0].device_kind,
                    "processes": jax.process_count()},
        "config": json.loads(config.to_json_best_effort()),
    }


def record_start(workdir: epath.Path, config) -> str | None:
    """run.json of a fresh run (process 0): its id, its launch, and the resumes to come. Returns the id."""
    import jax

    if jax.process_index() != 0:
        return None
    run_id = secrets.token_hex(8)
    _write(workdir / "run.json", {"id": run_id, **run_info(config), "resumes": []})
    return run_id


def record_resume(workdir: epath.Path, config, step: int, changes: dict[str, list]) -> str | None:
    """Append this launch to run.json's resumes: its step, commit, versions, devices and changed settings.
    Returns the run's id (process 0)."""
    import jax

    if jax.process_index() != 0:
        return None
    path = workdir / "run.json"
    record = json.loads(path.read_text()) if path.is_file() else {"resumes": []}
    info = run_info(config)
    del info["config"]
    record.setdefault("id", secrets.token_hex(8))  # (run.json before ids)
    record.setdefault("resumes", []).append({"step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **info,
                                             "changes": changes})
    _write(path, record)
    return record["id"]


def _write(path: epath.Path, content: dict) -> None:
    storage.write_whole(path, json.dumps(content, indent=2) + "\n")
