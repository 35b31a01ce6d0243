"""jaxlm.optim: schedules, the weight-decay mask, AdamW / LAMB, clipping, gradient accumulation."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxlm import optim


def _config(**overrides):
    cfg = ml_collections.ConfigDict(
        dict(
            name="adamw", learning_rate=1e-3, warmup_steps=10, num_steps=110, schedule="linear",
            weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=None,
        )
    )
    cfg.update(overrides)
    return cfg


class Bertish(nn.Module):
    """A parameter tree named like the model's: Embed, Dense, LayerNorm, a bare bias."""

    @nn.compact
    def __call__(self, ids):  # ids: (batch, length)
        x = nn.Embed(50, 8, name="word")(ids)  # (batch, length, 8)
        x = nn.LayerNorm(name="norm")(nn.Dense(8, name="dense")(x))
        bias = self.param("bias", nn.initializers.zeros, (50,))
        return x @ self.variables["params"]["word"]["embedding"].T + bias  # (batch, length, 50)


EXPECTED_MASK = {
    "word": {"embedding": True},
    "dense": {"kernel": True, "bias": False},
    "norm": {"scale": False, "bias": False},
    "bias": False,
}


@functools.cache
def _params():
    return Bertish().init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))["params"]


# --- schedules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, warmup, expected",
    [
        ("linear", 10, {0: 0.0, 5: 5e-4, 10: 1e-3, 60: 5e-4, 110: 0.0}),
        ("cosine", 10, {5: 5e-4, 10: 1e-3, 35: 1e-3 * (1 + math.cos(math.pi / 4)) / 2, 60: 5e-4, 110: 0.0}),
        ("constant", 10, {0: 0.0, 5: 5e-4, 10: 1e-3, 100: 1e-3}),
        ("linear", 0, {0: 1e-3, 55: 5e-4, 110: 0.0}),
    ],
)
def test_schedule_values(schedule, warmup, expected):
    fn = optim.make_schedule(_config(schedule=schedule, warmup_steps=warmup))
    for step, value in expected.items():
        np.testing.assert_allclose(fn(step), value, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")


def test_schedule_errors():
    with pytest.raises(ValueError, match="config.optim.schedule='exp'"):
        optim.make_schedule(_config(schedule="exp"))
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.make_schedule(_config(warmup_steps=110))
    with pytest.raises(ValueError, match="config.optim.name='sgd'"):
        optim.make_optimizer(_config(name="sgd"))


# --- weight decay -------------------------------------------------------------------------------


def test_decay_mask():
    assert optim.decay_mask(_params()) == EXPECTED_MASK
    # Boxed trees (logical partitioning) give the same mask, one bool per box.
    box = lambda v: nn.LogicallyPartitioned(v, (None,) * v.ndim)  # noqa: E731
    assert optim.decay_mask(jax.tree.map(box, _params())) == EXPECTED_MASK
    # A LayerNorm module is exempt whatever its leaves are called (Hugging Face's gamma / beta).
    hf_names = {"LayerNorm": {"gamma": 1.0, "beta": 0.0}, "dense": {"weight": 1.0}}
    expected = {"LayerNorm": {"gamma": False, "beta": False}, "dense": {"weight": True}}
    assert optim.decay_mask(hf_names) == expected


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_weight_decay_spares_biases_and_layernorm(name):
    params = _params()
    tx, _ = optim.make_optimizer(_config(name=name, warmup_steps=0, schedule="constant", weight_decay=0.1))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)

    def check(old_leaf, new_leaf, decays):
        if not decays:
            np.testing.assert_array_equal(new_leaf, old_leaf)
        elif name == "adamw":  # decoupled decay: p <- p - lr * wd * p
            np.testing.assert_allclose(new_leaf, old_leaf * (1 - 1e-3 * 0.1), rtol=1e-6)
        else:  # LAMB: the trust ratio scales the decay step to lr * ||p||
            step = jnp.linalg.norm(old_leaf - new_leaf)
            np.testing.assert_allclose(step, 1e-3 * jnp.linalg.norm(old_leaf), rtol=1e-5)

    jax.tree.map(check, params, new, EXPECTED_MASK)


# --- clipping and training ----------------------------------------------------------------------


def test_gradients_are_clipped_before_adam():
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50
    for clip_norm, expected_norm in [(None, 50.0), (0, 50.0), (2.0, 2.0)]:
        tx, _ = optim.make_optimizer(_config(clip_norm=clip_norm))
        _, state = tx.update(grads, tx.init(params), params)
        mu = optax.tree_utils.tree_get(state, "mu")  # (1 - b1) * the gradient Adam received
        np.testing.assert_allclose(jnp.linalg.norm(mu["w"]) / (1 - 0.9), expected_norm, rtol=1e-5)


@pytest.mark.parametrize("name, lr", [("adamw", 1e-2), ("lamb", 5e-2)])  # LAMB steps are relative to ||p||
def test_optimizer_trains(name, lr):
    ids = jax.random.randint(jax.random.key(1), (4, 6), 0, 50)
    model, params = Bertish(), _params()
    cfg = _config(name=name, learning_rate=lr, warmup_steps=2, num_steps=30, clip_norm=1.0)
    tx, _ = optim.make_optimizer(cfg)

    def loss(p):  # predict each token from itself
        logits = model.apply({"params": p}, ids)
        return optax.softmax_cross_entropy_with_integer_labels(logits, ids).mean()

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    state, losses = tx.init(params), []
    for _ in range(30):
        params, state, value = step(params, state)
        losses.append(float(value))
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses


# --- gradient accumulation ----------------------------------------------------------------------


def _mlm_batch():
    """16 rows x 6 positions; micro-batches of 4 (rows j, j+4, ...) have 24, 12, 6, 3 masked tokens."""
    rng = np.random.default_rng(0)
    weights = np.zeros((16, 6), np.float32)
    for micro, count in enumerate([24, 12, 6, 3]):
        rows = np.arange(micro, 16, 4)
        flat = rng.choice(4 * 6, count, replace=False)
        weights[rows[flat // 6], flat % 6] = 1.0
    return {
        "x": jnp.asarray(rng.normal(size=(16, 6, 5)), jnp.float32),
        "labels": jnp.asarray(rng.integers(0, 7, (16, 6))),
        "weights": jnp.asarray(weights),
        "nsp": jnp.asarray(rng.integers(0, 2, 16)),
    }


def _toy_loss(params, batch, rng, with_nsp=False):
    """MLM-like: a weighted token cross-entropy sum (a scalar), or a dict adding an NSP part."""
    del rng
    logits = jnp.tanh(batch["x"] @ params["w1"]) @ params["w2"]  # (batch, length, 7)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    correct = ((logits.argmax(-1) == batch["labels"]) * batch["weights"]).sum()
    mlm_sum, mlm_count = (token_loss * batch["weights"]).sum(), batch["weights"].sum()
    if not with_nsp:
        return mlm_sum, mlm_count, {"correct": correct}
    nsp_logits = logits[:, 0, :2]  # (batch, 2)
    nsp_sum = optax.softmax_cross_entropy_with_integer_labels(nsp_logits, batch["nsp"]).sum()
    nsp_count = jnp.asarray(batch["nsp"].shape[0], jnp.float32)
    return {"mlm": mlm_sum, "nsp": nsp_sum}, {"mlm": mlm_count, "nsp": nsp_count}, {"correct": correct}


def _objective(sums, denominators):
    return sum(jax.tree.leaves(jax.tree.map(jnp.divide, sums, denominators)))


TOY_PARAMS = {
    "w1": jax.random.normal(jax.random.key(1), (5, 16)),
    "w2": jax.random.normal(jax.random.key(2), (16, 7)),
}


def test_split_micro_batches_is_strided():
    batch = {"x": jnp.arange(16 * 2).reshape(16, 2)}
    micro = optim.split_micro_batches(batch, 4)["x"]  # (4, 4, 2)
    np.testing.assert_array_equal(micro[1, :, 0], [2, 10, 18, 26])  # rows 1, 5, 9, 13
    with pytest.raises(ValueError, match="config.optim.accumulate=3"):
        optim.split_micro_batches(batch, 3)


@pytest.mark.parametrize("with_nsp", [False, True])
def test_accumulation_equals_one_large_batch(with_nsp):
    batch = _mlm_batch()
    loss_fn = lambda p, b, r: _toy_loss(p, b, r, with_nsp)  # noqa: E731
    objective = lambda p, b: _objective(*loss_fn(p, b, None)[:2])  # noqa: E731
    expected = jax.jit(jax.grad(objective))(TOY_PARAMS, batch)

    micro = optim.split_micro_batches(batch, 4)
    accumulate = jax.jit(lambda p, b: optim.accumulate_gradients(loss_fn, p, b, jax.random.key(0)))
    grads, sums, denominators, aux = accumulate(TOY_PARAMS, micro)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), grads, expected)
    assert sum(jax.tree.leaves(denominators)) == 45 + 16 * with_nsp
    for got, full in zip((sums, denominators, aux), loss_fn(TOY_PARAMS, batch, None)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, full)

    # Averaging per-micro-batch means (optax.MultiSteps) weights the 3 masked tokens like the 24.
    per_micro = jax.jit(jax.vmap(jax.grad(objective), (None, 0)))(TOY_PARAMS, micro)
    naive = jax.tree.map(lambda g: g.mean(0), per_micro)
    rel = optax.tree.norm(jax.tree.map(jnp.subtract, naive, expected)) / optax.tree.norm(expected)
    assert rel > 0.05, rel


def test_micro_batch_rngs():
    rng = jax.random.key(3)
    loss_fn = lambda p, b, r: (p * b.sum(), 1.0, jax.random.uniform(r))  # noqa: E731
    _, _, _, aux = optim.accumulate_gradients(loss_fn, jnp.ones(()), jnp.ones((3, 2)), rng)
    np.testing.assert_allclose(aux, sum(jax.random.uniform(jax.random.fold_in(rng, i)) for i in range(3)))


def test_denominator_pass_costs_no_model_compute():
    """The first pass only needs the denominators: jit removes the model from it."""
    loss_fn = lambda p, b, r: _toy_loss(p, b, r, True)  # noqa: E731
    micro = optim.split_micro_batches(_mlm_batch(), 4)
    accumulated = jax.jit(lambda p, b: optim.accumulate_gradients(loss_fn, p, b, jax.random.key(0)))
    one = jax.jit(lambda p, b: jax.grad(lambda q: _objective(*loss_fn(q, b, None)[:2]))(p))
    count = lambda f, *a: f.lower(*a).as_text().count("dot_general")  # noqa: E731
    first = jax.tree.map(lambda x: x[0], micro)
    assert count(accumulated, TOY_PARAMS, micro) == count(one, TOY_PARAMS, first)
