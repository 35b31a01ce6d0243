"""The train state: step, parameters, optimizer state, and the count of skipped non-finite updates."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


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
