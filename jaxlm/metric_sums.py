"""Metric sums: how a step's metrics add up over micro-batches, steps and evaluation batches.

A task's loss returns its metrics as sums over the batch's examples (a mean is divided out in the task's
`summarize`), so any split of the data - micro-batches, devices, hosts, log windows - adds up to the same
numbers. A metric named `min_*` or `max_*` is an extreme instead (TRL's min_reward / max_reward), combined by
min / max; a batch without examples gives it +inf / -inf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _combine(key: str):
    if key.startswith("min_"):
        return jnp.minimum
    if key.startswith("max_"):
        return jnp.maximum
    return jnp.add


def pearson(n: float, x: float, y: float, xx: float, yy: float, xy: float) -> float:
    """Pearson's r from the sums over n pairs of x, y, x^2, y^2 and xy."""
    mx, my = x / n, y / n
    vx, vy = xx / n - mx * mx, yy / n - my * my
    return (xy / n - mx * my) / max(float(np.sqrt(max(vx, 0) * max(vy, 0))), 1e-12)


def merge(a, b):
    """Two metric dicts of the same keys as one (a pytree that is not a dict: sums throughout)."""
    if not isinstance(a, dict):
        return jax.tree.map(jnp.add, a, b)
    return {k: jax.tree.map(_combine(k), a[k], b[k]) for k in a}


def empty(shapes):
    """The identity of `merge` for metrics of these shapes (ShapeDtypeStructs or arrays)."""
    if not isinstance(shapes, dict):
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    fill = {jnp.minimum: jnp.inf, jnp.maximum: -jnp.inf, jnp.add: 0}
    return {k: jax.tree.map(lambda s, v=fill[_combine(k)]: jnp.full(s.shape, v, s.dtype), shapes[k]) for k in shapes}
