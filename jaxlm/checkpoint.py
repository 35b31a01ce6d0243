"""Checkpoints with orbax: asynchronous, atomic saves of the train state and the input position.

Layout of a workdir:

    checkpoints/<step>/{state,data,meta}   the last `keep` saves (orbax writes a step to a temporary
                                           directory and renames it when complete: a step on disk is whole)
    best/<step>/{state,data,meta}          the best save by `best_metric` (never a non-finite one)

`meta` holds the experiment's identity (task, model config): a workdir holding another experiment's
checkpoint is refused rather than resumed or overwritten.
"""

from __future__ import annotations

import logging
import math
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def _manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "data", "meta"))


class Checkpoints:
    """The latest K checkpoints and the best one of a workdir."""

    def __init__(self, workdir: str | pathlib.Path, *, keep: int, identity: dict,
                 best_metric: str | None = None, best_mode: str = "max"):
        self.workdir = pathlib.Path(workdir)
        self.identity = identity
        self.best_metric, self.best_mode = best_metric, best_mode
        if self.workdir.exists() and not self.workdir.is_dir():
            raise NotADirectoryError(f"--workdir {self.workdir}: exists and is not a directory")
        self.latest = _manager(self.workdir / "checkpoints", keep)
        self.best = _manager(self.workdir / "best", 1) if best_metric else None
        self.best_value = self._recorded_best()

    # ------------------------------------------------------------------ saving

    def save(self, step: int, state: Any, data_state: dict, *, metrics: dict | None = None) -> None:
        """Start an asynchronous save of `step` (returns while it is written)."""
        args = self._args(state, data_state, metrics)
        self.latest.save(step, args=args)

    def save_if_best(self, step: int, state: Any, data_state: dict, metrics: dict) -> bool:
        """Save to best/ if metrics[best_metric] is finite and better than the best so far."""
        if self.best is None:
            return False
        value = metrics.get(self.best_metric)
        if value is None or not math.isfinite(value):
            return False
        better = self.best_value is None or (
            value > self.best_value if self.best_mode == "max" else value < self.best_value
        )
        if not better:
            return False
        self.best.wait_until_finished()
        self.best.save(step, args=self._args(state, data_state, metrics), force=True)
        self.best_value = value
        return True

    def _args(self, state, data_state, metrics):
        meta = {"identity": self.identity, "metrics": metrics or {}}
        return ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)
        )

    def wait(self) -> None:
        self.latest.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        if self.best is not None:
            self.best.close()

    # ------------------------------------------------------------------ restoring

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, abstract_state: Any, *, which: str = "latest", step: int | None = None
                ) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, meta) of the newest complete checkpoint, or None if there is none.

        `abstract_state` holds ShapeDtypeStructs with shardings: the state is restored straight onto that
        mesh, whatever the mesh it was saved from. A checkpoint that cannot be read is reported with its
        path and the previous one is tried.
        """
        manager = self.latest if which == "latest" else self.best
        if manager is None:
            return None
        steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
        for s in steps:
            path = manager.directory / str(s)
            try:
                meta = manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: report it, try the previous one
                log.error("checkpoint %s: cannot read its metadata (%s); trying an older one", path, e)
                continue
            self.check_identity(meta, path)
            try:
                restored = manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001
                log.error("checkpoint %s: cannot be restored (%s); trying an older one", path, e)
                continue
            return s, restored["state"], restored["data"], meta
        if steps:
            raise RuntimeError(f"{manager.directory}: none of the checkpoints {steps} can be restored (see errors above)")
        return None

    def check_identity(self, meta: dict, path) -> None:
        theirs = meta.get("identity", {})
        if theirs != self.identity:
            diff = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
            raise ValueError(
                f"{path}: this workdir holds another experiment's checkpoint (differs in {diff}: "
                f"{ {k: theirs.get(k) for k in diff} } vs now { {k: self.identity.get(k) for k in diff} }); "
                "use a new --workdir"
            )

    def _recorded_best(self) -> float | None:
        if self.best is None or self.best.latest_step() is None:
            return None
        step = self.best.latest_step()
        meta = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        return meta["metrics"].get(self.best_metric)


def restore_params(workdir: str | pathlib.Path, abstract_params: Any | None = None, *, prefer_best: bool = True
                   ) -> tuple[dict, Any]:
    """(meta, params) of a jaxlm workdir's best (else latest) checkpoint, e.g. to fine-tune or predict.

    Without `abstract_params` the params come back as host numpy arrays."""
    workdir = pathlib.Path(workdir)
    for sub in (("best", "checkpoints") if prefer_best else ("checkpoints",)):
        directory = workdir / sub
        if not directory.is_dir():
            continue
        manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                        item_names=("state", "data", "meta"))
        step = manager.latest_step()
        if step is None:
            continue
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if abstract_params is None:
            state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))["state"]
            return meta, state["params"]
        target = {"params": abstract_params}
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
        state = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))["state"]
        return meta, state["params"]
    raise FileNotFoundError(f"{workdir}: no jaxlm checkpoint (expected {workdir}/best or {workdir}/checkpoints)")


def write_params(workdir: str | pathlib.Path, identity: dict, params: Any) -> pathlib.Path:
    """A workdir holding only parameters (e.g. an imported Hugging Face checkpoint) to fine-tune from."""
    directory = pathlib.Path(workdir) / "checkpoints"
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=False), item_names=("state", "data", "meta"))
    manager.save(0, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params}), data=ocp.args.JsonSave({"step": 0}),
        meta=ocp.args.JsonSave({"identity": identity, "metrics": {}})))
    manager.wait_until_finished()
    manager.close()
    return directory
