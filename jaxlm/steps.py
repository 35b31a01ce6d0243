"""The pure step functions the trainer jits: (state, batch, rng) -> (state, metric sums), and evaluation.

Kept apart from `jaxlm.train` so that what runs them without the data stack (benchmarks on a machine
that has jax but not tensorflow-datasets, grain or ml_collections) uses the very same step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxlm import optim


def train_step(state, batch, rng, *, model, tx, loss, accumulate: int):
    """One optimizer step over `batch` (split into `accumulate` micro-batches). Non-finite updates are
    refused (state unchanged, `skipped` counted), so a NaN never reaches the parameters."""
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params, micro_batch, r):
        out = model.apply({"params": params}, micro_batch, deterministic=False, rngs={"dropout": r})
        return loss(out, micro_batch)

    micro = optim.split_micro_batches(batch, accumulate)
    grads, loss_sums, denominators, aux = optim.accumulate_gradients(loss_fn, state.params, micro, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    objective = sum(s / jnp.maximum(d, 1) for s, d in zip(jax.tree.leaves(loss_sums), jax.tree.leaves(denominators)))
    finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm)
    finite &= jnp.all(jnp.array([jnp.isfinite(p).all() for p in jax.tree.leaves(params)]))  # e.g. an infinite LR
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = state.replace(step=state.step + 1, params=keep(params, state.params),
                              opt_state=keep(opt_state, state.opt_state), skipped=state.skipped + (~finite))
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
