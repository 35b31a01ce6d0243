"""Checkpoints with orbax: asynchronous, atomic saves of the train state and the input position.

Layout of a workdir:

    checkpoints/<step>/{state,data,meta}   the last `keep` saves (orbax writes a step to a temporary
                                           directory and renames it when complete: a step on disk is whole)
    best/<step>/{state,data,meta}          the best save by `best_metric` (never a non-finite one)

`meta` holds the experiment's identity (task, model config): a workdir holding another experiment's
checkpoint is refused rather than resumed or overwritten. It also holds the state's layout (`scan_layers`:
the encoder's parameters stacked per layer or not), which a run may choose anew but a resume must match:
a checkpoint of the other layout is refused with the setting that reads it, not taken for unreadable.

Faults: a save that cannot be written (disk full, a file where a directory must be) raises `StorageError`
naming the checkpoint and the last complete one, which stays intact. A checkpoint that cannot be read is
reported with its path, moved to `unreadable/` and the previous one restored; when checkpoints exist but
none can be read, restore raises rather than start from scratch. Unfinished (temporary) saves of a killed
run are never read, and are removed when the next run opens the workdir.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxlm import distributed, faults, storage

log = logging.getLogger(__name__)


class StorageError(OSError):
    """A checkpoint that cannot be written: the message names it, the cause and the last complete one."""


def _manager(directory: epath.Path, keep: int) -> ocp.CheckpointManager:
    _check_writable(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data", "meta"))


def _check_writable(directory: epath.Path) -> None:
    """Fail at start-up, not at the first save, when checkpoints cannot be written in `directory`."""
    if directory.exists() and not directory.is_dir():
        raise StorageError(f"{directory}: cannot write checkpoints there: it is a file, not a directory")
    probe = directory / f".jaxlm-write-probe-{jax.process_index()}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise StorageError(f"{directory}: cannot write checkpoints there: {e}") from e


def _is_storage_failure(e: BaseException) -> bool:
    """An I/O failure of a save: OSError, or tensorstore's ValueError carrying an OS error code."""
    return isinstance(e, OSError) or (isinstance(e, ValueError) and "os_error_code" in str(e))


def _reason(e: BaseException) -> str:
    """A short cause: the OS error, not tensorstore's whole spec."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (errno {e.errno})"
    code = re.search(r"os_error_code='?(\d+)", str(e))
    if code:
        return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
    return str(e).splitlines()[0][:300] if str(e) else type(e).__name__


def _unreadable(failure: BaseException | None) -> str:
    """Why a checkpoint the hosts agreed not to use is unreadable: this process's failure, or another's."""
    return _reason(failure) if failure is not None else "another process cannot read it"


class Checkpoints:
    """The latest K checkpoints and the best one of a workdir."""

    def __init__(self, workdir: str | os.PathLike, *, keep: int, identity: dict, layout: dict | None = None,
                 best_metric: str | None = None, best_mode: str = "max"):
        self.workdir = storage.path(workdir)
        self.identity, self.layout = identity, layout or {}
        self.best_metric, self.best_mode = best_metric, best_mode
        self.latest = _manager(self.workdir / "checkpoints", keep)
        self.best = _manager(self.workdir / "best", 1) if best_metric else None
        self.best_value = self._recorded_best()
        newest = self.latest.latest_step()
        if identity and newest is not None:  # (an empty identity: opened only to look at the steps)
            try:
                meta = self._read_meta(self.latest, newest)
            except Exception:  # noqa: BLE001 - unreadable: `restore` reports it and falls back
                meta = None
            if meta is not None:
                self.check_identity(meta, self.latest.directory / str(newest))

    # ------------------------------------------------------------------ saving

    def save(self, step: int, state: Any, data_state: dict, *, metrics: dict | None = None) -> None:
        """Start an asynchronous save of `step` (returns while it is written, once a best/ save in flight is done)."""
        args = self._args(state, data_state, metrics)
        if self.best is not None:  # a best save in flight completes first: if it fails, the run stops before
            with self._writing(self.best, None):  # the latest moves past its step (a relaunch redoes it)
                self.best.wait_until_finished()
                self.best.check_for_errors()
        with self._writing(self.latest, step):
            if not self.latest.save(step, args=args):
                log.warning("checkpoint %s not written: step %s is already on disk", self.latest.directory / str(step),
                            self.latest.latest_step())
        faults.hit("save", step)

    def save_if_best(self, step: int, state: Any, data_state: dict, metrics: dict) -> bool:
        """Save to best/ if metrics[best_metric] is finite and better than the best so far."""
        if self.best is None:
            return False
        value = metrics.get(self.best_metric)
        if value is None or not all(math.isfinite(v) for v in metrics.values() if isinstance(v, (int, float))):
            return False  # a diverged evaluation (a NaN loss beside a finite accuracy) is never the best
        better = self.best_value is None or (
            value > self.best_value if self.best_mode == "max" else value < self.best_value
        )
        if not better:
            return False
        if step in self.best.all_steps():  # this step evaluated again after a resume (on another mesh, say):
            return False                   # the best/ save of its first evaluation stays
        with self._writing(self.best, step):
            self.best.wait_until_finished()
            self.best.save(step, args=self._args(state, data_state, metrics), force=True)
        self.best_value = value
        return True

    def _args(self, state, data_state, metrics):
        meta = {"identity": self.identity, "layout": self.layout, "metrics": metrics or {}}
        return ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)
        )

    def wait(self) -> None:
        for manager in (self.latest, self.best):
            if manager is not None:
                with self._writing(manager, None):
                    manager.wait_until_finished()

    def close(self) -> None:
        """Release the managers; a failed save was raised by `save` or `wait`, so it is only logged here."""
        for manager in (self.latest, self.best):
            if manager is None:
                continue
            try:
                manager.close()
            except Exception as e:  # noqa: BLE001 - already raised once; closing must not hide that error
                log.error("closing %s: %s", manager.directory, _reason(e))

    @contextlib.contextmanager
    def _writing(self, manager: ocp.CheckpointManager, step: int | None):
        """I/O failures of a save (possibly an earlier asynchronous one) -> StorageError naming the step."""
        try:
            yield
        except Exception as e:
            if not _is_storage_failure(e):
                raise
            failed = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(e))
            step = int(failed.group(1)) if failed else step
            what = manager.directory / str(step) if step is not None else f"a checkpoint in {manager.directory}"
            self.latest.reload()
            last = self.latest.latest_step()  # what a relaunch resumes from
            last = f"{self.latest.directory / str(last)}, is intact" if last is not None else "none"
            raise StorageError(f"cannot write checkpoint {what}: {_reason(e)}; is the disk full or the workdir "
                               f"unwritable? The newest complete checkpoint: {last}") from e

    # ------------------------------------------------------------------ restoring

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_state: Any, *, step: int | None = None) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, meta) of the newest complete checkpoint (or of `step`), or None if there is none.

        `abstract_state` holds ShapeDtypeStructs with shardings: the state is restored straight onto that
        mesh, whatever the mesh it was saved from. A checkpoint that cannot be read is reported with its
        path and the previous one is tried (on every host when one host cannot read it); once one is
        restored, the unreadable newer ones are moved to `unreadable/` (so that their steps can be saved
        again). Checkpoints none of which can be read raise ValueError: a run never starts from scratch
        over them.
        """
        manager = self.latest
        steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
        unreadable = []
        for s in steps:
            path = manager.directory / str(s)
            meta, failure = None, None
            try:
                meta = self._read_meta(manager, s)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: report it, try the previous one
                failure = e
            # Every host restores the same step: one that cannot read it makes all of them try the previous.
            # (A host failing inside orbax's collective restore below is beyond this: orbax's barrier waits.)
            if distributed.all_agree(failure is None):
                self.check_identity(meta, path)  # another experiment's checkpoint is refused, not skipped
                try:
                    restored = manager.restore(s, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                except Exception as e:  # noqa: BLE001
                    failure = e
                if distributed.all_agree(failure is None):
                    for bad, _ in unreadable:
                        self._set_aside(manager, bad)
                    return s, restored["state"], restored["data"], meta
            log.error("checkpoint %s cannot be read (%s); trying an older one", path, _unreadable(failure))
            unreadable.append((s, _unreadable(failure)))
        if unreadable:
            raise ValueError(
                f"{manager.directory}: no checkpoint can be read ("
                + "; ".join(f"{manager.directory / str(s)}: {why}" for s, why in unreadable)
                + "); not starting from scratch over them: repair them, or move them away to start afresh")
        return None

    @staticmethod
    def _read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
        """A step's meta item, read by this process alone: orbax's manager would hold a barrier with the
        other hosts, which a host that cannot read the step never reaches."""
        faults.hit("read", step)
        directory = manager.directory / str(step) / "meta"
        meta = ocp.JsonCheckpointHandler().restore(directory, args=ocp.args.JsonRestore())
        if not isinstance(meta, dict):
            raise ValueError("its meta item is missing")
        return meta

    def _set_aside(self, manager: ocp.CheckpointManager, step: int) -> None:
        """Move an unreadable step to workdir/unreadable/ (kept for inspection, no longer a step)."""
        if jax.process_index() == 0:
            source = manager.directory / str(step)
            target = self.workdir / "unreadable" / f"{manager.directory.name}-{step}"
            while target.exists():
                target = target.with_name(target.name + "+")
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.move(source, target)
            log.warning("moved the unreadable checkpoint %s to %s", source, target)
        distributed.sync(f"jaxlm_set_aside_{manager.directory.name}_{step}")
        manager.reload()

    def check_identity(self, meta: dict, path) -> None:
        """Another experiment's checkpoint, or this one's in another layout, is refused with what differs."""
        theirs = meta.get("identity", {})
        if theirs != self.identity:
            diff = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
            raise ValueError(
                f"{path}: this workdir holds another experiment's checkpoint (differs in {diff}: "
                f"{ {k: theirs.get(k) for k in diff} } vs now { {k: self.identity.get(k) for k in diff} }); "
                "use a new --workdir"
            )
        saved = meta.get("layout", {})  # (checkpoints from before the layout was recorded have none)
        differ = {k: v for k, v in saved.items() if k in self.layout and self.layout[k] != v}
        if differ:
            raise ValueError(
                f"{path}: saved with " + ", ".join(f"model.{k}={v}" for k, v in differ.items()) + ", this run has "
                + ", ".join(f"model.{k}={self.layout[k]}" for k in differ) + ": resume with "
                + " ".join(f"--config.model.{k}={v}" for k, v in differ.items())
                + " (or, in a new --workdir, model.init_from='jaxlm:WORKDIR' takes its parameters in either layout)"
            )

    def _recorded_best(self) -> float | None:
        if self.best is None or self.best.latest_step() is None:
            return None
        step = self.best.latest_step()
        meta, failure = None, None
        try:
            meta = self._read_meta(self.best, step)
        except Exception as e:  # noqa: BLE001 - an unreadable best: report it and keep the next best instead
            failure = e
        if not distributed.all_agree(failure is None):
            log.error("best checkpoint %s cannot be read (%s)", self.best.directory / str(step), _unreadable(failure))
            self._set_aside(self.best, step)
            return None
        if self.identity:
            self.check_identity(meta, self.best.directory / str(step))
        return meta["metrics"].get(self.best_metric)


class _ReadOnlyNotice(logging.Filter):
    """Drops orbax's warnings that a read-only manager is read only (its directory; no saves): read-only is
    what `restore_params` asks for, and `jaxlm predict` and `evaluate` printed them on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Given directory is read only", "CheckpointManagerOptions.read_only"))


logging.getLogger("absl").addFilter(_ReadOnlyNotice())


def restore_params(workdir: str | os.PathLike, abstract_params: Any | None = None, *, prefer_best: bool = True
                   ) -> tuple[dict, Any]:
    """(meta, params) of a jaxlm workdir's best (else latest) checkpoint, e.g. to fine-tune or predict.

    Without `abstract_params` the params come back as host numpy arrays."""
    workdir = storage.path(workdir)
    for sub in (("best", "checkpoints") if prefer_best else ("checkpoints",)):
        directory = workdir / sub
        if not directory.is_dir():
            continue
        manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                                        item_names=("state", "data", "meta"))
        step = manager.latest_step()
        if step is None:
            continue
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if abstract_params is None:  # host arrays, whatever devices the checkpoint was saved from
            saved = ocp.PyTreeCheckpointHandler().metadata(directory / str(step) / "state").tree
            target = {"params": saved["params"]}
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
            state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True)))["state"]
            return meta, state["params"]
        target = {"params": abstract_params}
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
        state = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))["state"]
        return meta, state["params"]
    raise FileNotFoundError(f"{workdir}: no jaxlm checkpoint (expected {workdir}/best or {workdir}/checkpoints)")


def write_params(workdir: str | os.PathLike, identity: dict, params: Any) -> epath.Path:
    """A workdir holding only parameters (e.g. an imported Hugging Face checkpoint) to fine-tune from."""
    directory = storage.path(workdir) / "checkpoints"
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False), item_names=("state", "data", "meta"))
    manager.save(0, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params}), data=ocp.args.JsonSave({"step": 0}),
        meta=ocp.args.JsonSave({"identity": identity, "metrics": {}})))
    manager.wait_until_finished()
    manager.close()
    return directory
