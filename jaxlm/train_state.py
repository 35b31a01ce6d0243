"""The train state (step, parameters, optimizer state, skipped non-finite updates) and the one recipe that makes
it sharded over a mesh: what training, `jaxlm compile`, inference and the benchmarks all build their state with."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxlm import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    skipped: jax.Array  # updates refused because the loss or the gradient was not finite


def create(model, tx: optax.GradientTransformation, rng: jax.Array, max_seq_length: int) -> TrainState:
    """A fresh state, its parameters boxed with logical axis names (`jaxlm.sharding` unboxes them)."""
    dummy = {"input_ids": jnp.zeros((1, max_seq_length), jnp.int32)}
    params = model.init(rng, dummy)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      skipped=jnp.zeros((), jnp.int32))


def init(model, tx, mesh, key: jax.Array, *, max_seq_length: int) -> tuple[TrainState, TrainState]:
    """(state, its NamedShardings): initialised straight into its shards on `mesh` (never whole on one device)."""
    with sharding.mesh_context(mesh):
        return sharding.init_sharded(functools.partial(create, model, tx, max_seq_length=max_seq_length), mesh, key)


def abstract(model, tx, mesh, key: jax.Array, *, max_seq_length: int) -> TrainState:
    """The state as ShapeDtypeStructs with their shardings on `mesh`: a restore target, or what to compile for.
    `key` may itself be abstract (`jax.eval_shape(lambda: jax.random.key(0))`)."""
    with sharding.mesh_context(mesh):
        return sharding.abstract_state(functools.partial(create, model, tx, max_seq_length=max_seq_length), mesh, key)
