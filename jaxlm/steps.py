"""The pure step functions the trainer jits: (state, batch, rng) -> (state, metric sums), and evaluation.

Kept apart from `jaxlm.train` so that what runs them without the data stack (benchmarks on a machine
that has jax but not tensorflow-datasets, grain or ml_collections) uses the very same step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jaxlm import optim, sharding


def jit_train_step(model, loss, tx, mesh, shardings, accumulate: int):
    """The train step under jit with its shardings, the state donated: what training runs, what
    `jaxlm compile` (jaxlm.aot) compiles ahead of time for a TPU topology, and what benchmarks time."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx, loss=loss, accumulate=accumulate),
        in_shardings=(shardings, sharding.batch_sharding(mesh), replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
    )


def train_step(state, batch, rng, *, model, tx, loss, accumulate: int):
    """One optimizer step over `batch` (split into `accumulate` micro-batches). A step whose loss or
    gradients are not finite is refused (state unchanged, `skipped` counted): a NaN never reaches the
    parameters.

    The optimizer's learning rate, weight decay, epsilon and betas are checked when it is made
    (`optim.make_optimizer`), so finite gradients give finite parameters, and the check, known before
    the update, picks between the update and the old state with `lax.cond`. (Selecting elementwise
    between new and old parameters, checked after the update, cost bert-base a 20 s longer compile and
    ~5% of its step time on CPU: benchmarks/profile_step.py.)"""
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params, micro_batch, r):
        out = model.apply({"params": params}, micro_batch, deterministic=False, rngs={"dropout": r})
        return loss(out, micro_batch)

    micro = optim.split_micro_batches(batch, accumulate)
    grads, loss_sums, denominators, aux = optim.accumulate_gradients(loss_fn, state.params, micro, rng)
    grad_norm = optax.global_norm(grads)
    objective = sum(s / jnp.maximum(d, 1) for s, d in zip(jax.tree.leaves(loss_sums), jax.tree.leaves(denominators)))
    finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm)

    def update(params, opt_state):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state.params, state.opt_state)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              skipped=state.skipped + (~finite))
    metrics = flat_sums(loss_sums, denominators, aux)
    metrics.update(grad_norm=grad_norm, nonfinite=(~finite).astype(jnp.float32),
                   tokens=jnp.sum(batch["attention_mask"]).astype(jnp.float32))
    return new_state, metrics


def eval_step(params, batch, *, model, loss):
    out = model.apply({"params": params}, batch, deterministic=True)
    return flat_sums(*loss(out, batch))


def flat_sums(loss_sums: dict, denominators: dict, aux: dict) -> dict:
    out = {f"{k}_loss_sum": v for k, v in loss_sums.items()}
    out.update({f"{k}_count": v for k, v in denominators.items()})
    out.update(aux)
    return out
