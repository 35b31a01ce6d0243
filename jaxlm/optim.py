"""Optimizers from config (AdamW and LAMB as BERT uses them), schedules, and gradient accumulation.

`make_optimizer(cfg)` reads these fields of `cfg` (`config.optim`, with `num_steps` filled in by the
trainer); the config file holds their values, this module invents none:

    name           'adamw' | 'lamb'
    learning_rate  peak learning rate, reached at the end of warm-up
    warmup_steps   linear warm-up from 0 over this many steps (0: none)
    num_steps      total optimizer steps; 'linear' and 'cosine' decay to 0 at this step
    schedule       'linear' | 'cosine' | 'constant' (after warm-up)
    weight_decay   decoupled weight decay (BERT: 0.01), not applied to biases and LayerNorm
    b1, b2, eps    Adam moments (BERT: 0.9, 0.999, 1e-6)
    clip_norm      global-norm clipping of the gradients before the optimizer; 0 or None: off
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta

from jaxlm import metric_sums

# Parameter leaves never decayed (flax Dense/LayerNorm `bias`, LayerNorm `scale`), and the module
# name marking a normalisation layer whatever its leaves are called (LayerNorm_0, norm, layer_norm).
NO_DECAY_LEAVES = ("bias", "scale")
NORM_MODULE = "norm"


def make_schedule(cfg) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate`, then linear or cosine decay to 0, or constant."""
    lr, warmup, total = cfg.learning_rate, cfg.warmup_steps, cfg.num_steps
    if not (lr > 0 and np.isfinite(np.float32(lr))):  # float32: 1e39 is a finite float but an infinite update
        raise ValueError(f"config.optim.learning_rate={lr}: expected a positive number, finite in float32")
    if not 0 <= warmup < total:
        raise ValueError(f"Need 0 <= config.optim.warmup_steps ({warmup}) < num_steps ({total}).")
    if cfg.schedule == "linear":
        after = optax.linear_schedule(lr, 0.0, total - warmup)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, total - warmup)
    elif cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(f"config.optim.schedule={cfg.schedule!r}: expected 'linear', 'cosine', 'constant'.")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: every parameter except biases, LayerNorm scales and biases.

    Works on plain and on boxed (`nn.LogicallyPartitioned`) trees; a box gets one bool.
    """

    def decays(path, _) -> bool:
        names = [_key_name(k) for k in path]
        in_norm = any(NORM_MODULE in n.lower() for n in names[:-1])
        return names[-1] not in NO_DECAY_LEAVES and not in_norm

    return jax.tree_util.tree_map_with_path(decays, params, is_leaf=meta.is_axis_metadata)


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, learning-rate schedule) from `cfg` (see the module docstring)."""
    schedule = make_schedule(cfg)
    if not (cfg.weight_decay >= 0 and np.isfinite(np.float32(cfg.weight_decay))):
        raise ValueError(f"config.optim.weight_decay={cfg.weight_decay}: expected a number >= 0, finite in float32")
    if not (np.float32(cfg.eps) > 0 and np.isfinite(np.float32(cfg.eps))):  # 0: a parameter without gradient gets 0/0
        raise ValueError(f"config.optim.eps={cfg.eps}: expected a positive number, finite in float32")
    for field in ("b1", "b2"):  # b2 = 1: Adam's bias correction divides by 1 - b2^t = 0
        if not 0 <= getattr(cfg, field) < 1:
            raise ValueError(f"config.optim.{field}={getattr(cfg, field)}: expected a number in [0, 1)")
    if cfg.name == "adamw":
        tx = optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
        )
    elif cfg.name == "lamb":
        # As BERT's LAMB: biases and LayerNorm get neither weight decay nor the layer-wise trust ratio.
        tx = optax.chain(
            optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
            optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
            optax.masked(optax.scale_by_trust_ratio(), decay_mask),
            optax.scale_by_learning_rate(schedule),
        )
    else:
        raise ValueError(f"config.optim.name={cfg.name!r}: expected 'adamw' or 'lamb'.")
    if cfg.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx, schedule


def split_micro_batches(batch: dict[str, jax.Array], num: int) -> dict[str, jax.Array]:
    """(batch, ...) -> (num, batch // num, ...), micro-batch j taking rows j, j + num, j + 2 num, ...

    Strided, so that each device's contiguous block of rows feeds every micro-batch: no data moves
    between devices when each device's row count is divisible by `num`.
    """

    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"Batch size {x.shape[0]} is not divisible by config.optim.accumulate={num}.")
        x = x.reshape(x.shape[0] // num, num, *x.shape[1:])  # (batch // num, num, ...)
        return jnp.swapaxes(x, 0, 1)  # (num, batch // num, ...)

    return jax.tree.map(split, batch)


def accumulate_gradients(
    loss_fn: Callable[..., tuple[Any, Any, Any]], params: Any, micro_batches: Any, rng: jax.Array
) -> tuple[Any, Any, Any, Any]:
    """Gradients of a loss normalised by denominators over all micro-batches, one backward pass each.

    loss_fn(params, micro_batch, rng) -> (loss_sums, denominators, aux): `loss_sums` a scalar or a
    pytree of scalar parts (e.g. {'mlm': ..., 'nsp': ...}), each a sum over the micro-batch;
    `denominators` the same structure (masked tokens, examples), depending on the batch only;
    `aux` a dict of metric sums (`jaxlm.metric_sums`). `micro_batches` has a leading micro-batch axis; micro-batch i
    gets rng `fold_in(rng, i)`.

    The objective is sum_p L_p / D_p, where L_p and D_p sum part p over all micro-batches: so the
    result equals the gradient on the whole batch at once, whatever the masked-token count of each
    micro-batch (averaging per-micro-batch means, as `optax.MultiSteps` does, does not).
    Returns (grads, loss_sums, denominators, aux), the last three summed over micro-batches.
    """
    num = jax.tree.leaves(micro_batches)[0].shape[0]
    rngs = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(num))

    # Pass 1: the denominators. They depend on the batch only, so jit drops the model from this pass.
    per_micro = jax.lax.map(lambda xs: loss_fn(params, xs[0], xs[1])[1], (micro_batches, rngs))
    totals = jax.tree.map(lambda d: d.sum(0), per_micro)
    safe = jax.tree.map(lambda d: jnp.where(d > 0, d, 1), totals)

    def objective(p, micro_batch, r):
        loss_sums, _, aux = loss_fn(p, micro_batch, r)
        parts = jax.tree.map(lambda s, d: s / d, loss_sums, safe)
        return sum(jax.tree.leaves(parts)), (loss_sums, aux)

    def step(carry, xs):
        (_, (loss_sums, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params, *xs)
        sums = jax.tree.map(jnp.add, carry[:2], (grads, loss_sums))
        return (*sums, metric_sums.merge(carry[2], aux)), None

    # Pass 2: forward and backward per micro-batch, summing gradients, loss sums and aux.
    first = jax.tree.map(lambda x: x[0], (micro_batches, rngs))
    _, sums_and_aux = jax.eval_shape(objective, params, *first)
    init = (*jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (params, sums_and_aux[0])),
            metric_sums.empty(sums_and_aux[1]))
    (grads, loss_sums, aux), _ = jax.lax.scan(step, init, (micro_batches, rngs))
    return grads, loss_sums, totals, aux
