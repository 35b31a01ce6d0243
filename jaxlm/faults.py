"""Fault injection for the reliability tests: named points of the trainer that kill, preempt or poison it.

    JAXLM_FAULT='POINT:STEP[:ACTION][,POINT:STEP[:ACTION]...]'     e.g. JAXLM_FAULT=commit:20

STEP is the training step a point belongs to (the step number its checkpoint would carry). Points:

    step     update STEP dispatched to the devices, before its metrics, evaluation and checkpoint
    eval     the evaluation at STEP under way (its first batch dispatched)
    save     the asynchronous save of STEP started: its files are being written in the background
    commit   the save of STEP written to its temporary directory, not yet renamed into place
             (inside orbax's atomic commit, on the background thread)
    batch    the batch of update STEP, before it is sent to the devices (only with the action 'nan')
    write    here the number is not a step but N: the N-th file that orbax opens for writing in this
             process (its metadata and JSON items; the arrays go through tensorstore), with 'ioerror'
    read     reading checkpoint STEP when restoring, in this process only, with 'ioerror' (a host that
             cannot read a checkpoint the others can)

Actions (the default is the first that fits the point): 'kill' (SIGKILL: no clean-up runs), 'term'
(SIGTERM, as a preempted TPU VM gets), 'pause' (wait for a signal from outside, e.g. a real SIGTERM sent
by a test once it reads this point's line on stderr; main-thread points only), 'nan' (the batch's float
inputs become NaN: a loss and gradient that diverge), 'ioerror' (the write fails with ENOSPC, as on a full
disk: storage failing on its N-th write; EIO reading a checkpoint).

Unarmed (no JAXLM_FAULT), `hit` and `poison` are no-op functions and orbax is left untouched.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time

import numpy as np

POINTS = ("step", "eval", "save", "commit", "batch", "write", "read")
ACTIONS = ("kill", "term", "pause", "nan", "ioerror")
ONLY = {"batch": "nan", "write": "ioerror", "read": "ioerror"}  # points that take one action (their default)

_plan: dict[tuple[str, int], str] = {}
_step = 0  # the latest step the trainer passed (for points that do not know it: eval)
_writes = 0  # files opened for writing through etils.epath since the plan was armed


def parse(spec: str) -> dict[tuple[str, int], str]:
    """'commit:20,step:7:term' -> {('commit', 20): 'kill', ('step', 7): 'term'}."""
    plan = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, rest = part.partition(":")
        step, _, action = rest.partition(":")
        action = action or ONLY.get(point, "kill")
        if point not in POINTS or not step.isdigit() or action not in ACTIONS or (
                ONLY.get(point, action) != action or (action in ONLY.values() and point not in ONLY)):
            raise ValueError(f"JAXLM_FAULT={spec!r}: expected POINT:STEP[:ACTION] with POINT one of {POINTS}, "
                             f"ACTION one of {ACTIONS} ('nan' only with 'batch', 'ioerror' only with 'write' "
                             "or 'read')")
        plan[(point, int(step))] = action
    return plan


def _off(point: str, step: int | None = None) -> None:
    pass


def _identity(batch: dict, step: int) -> dict:
    return batch


def _hit(point: str, step: int | None = None) -> None:
    global _step
    if step is None:
        step = _step
    elif point == "step":
        _step = step
    action = _plan.get((point, step))
    if action is None:
        return
    if action == "pause":  # until SIGTERM or SIGINT comes from outside (a test sends it once it reads the line)
        got, awaited = [], (signal.SIGTERM, signal.SIGINT)
        handlers = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in awaited}
        print(f"jaxlm fault injection: {action} at {point}:{step}", file=sys.stderr, flush=True)
        while not got:  # (not signal.pause(): the kernel may hand the signal to another thread, waking no pause)
            time.sleep(0.01)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        signal.raise_signal(got[0])  # again, to this thread: the run's own handler takes it now
        return
    print(f"jaxlm fault injection: {action} at {point}:{step}", file=sys.stderr, flush=True)
    if action == "ioerror":
        raise OSError(errno.EIO, os.strerror(errno.EIO) + " (injected)", f"{point}:{step}")
    os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGTERM)
    if action == "kill":
        signal.pause()  # SIGKILL is never late, but nothing more of this process may run


def _poison(batch: dict, step: int) -> dict:
    if _plan.get(("batch", step)) != "nan":
        return batch
    print(f"jaxlm fault injection: nan at batch:{step}", file=sys.stderr, flush=True)
    return {k: np.full_like(v, np.nan) if np.issubdtype(v.dtype, np.floating) else v for k, v in batch.items()}


hit = _off  # hit(point, step=None): the fault planned for (point, step), if any
poison = _identity  # poison(batch, step): the batch, or a NaN one where planned


def _patch_writes() -> None:
    """The 'write' point: files opened for writing through etils.epath (how orbax writes its own files)."""
    from etils.epath import gpath

    cls = gpath._GPath
    if getattr(cls.open, "_jaxlm_fault", False):
        return
    open_ = cls.open

    def patched(self, mode="r", **kwargs):
        global _writes
        if any(m in mode for m in "wax"):
            _writes += 1
            if _plan.get(("write", _writes)) == "ioerror":
                print(f"jaxlm fault injection: ioerror at write:{_writes} ({self})", file=sys.stderr, flush=True)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return open_(self, mode, **kwargs)

    patched._jaxlm_fault = True
    cls.open = patched


def _patch_orbax() -> None:
    """The 'commit' point: orbax's rename of a step's temporary directory into place, on its save thread."""
    from orbax.checkpoint._src.path import atomicity

    cls = atomicity.AtomicRenameTemporaryPath
    if getattr(cls.finalize, "_jaxlm_fault", False):
        return
    finalize = cls.finalize

    async def patched(self, *args, **kwargs):
        name = self.get_final().name
        if name.isdigit():  # a step directory (items inside it are named state, data, meta)
            hit("commit", int(name))
        return await finalize(self, *args, **kwargs)

    patched._jaxlm_fault = True
    cls.finalize = patched


def arm(spec: str) -> None:
    """Plan the faults of `spec` (see the module docstring); '' disarms (the hooks become no-ops again)."""
    global hit, poison, _plan, _writes
    _plan, _writes = parse(spec), 0
    hit, poison = (_hit, _poison) if _plan else (_off, _identity)
    if any(point == "commit" for point, _ in _plan):
        _patch_orbax()
    if any(point == "write" for point, _ in _plan):
        _patch_writes()


arm(os.environ.get("JAXLM_FAULT", ""))
