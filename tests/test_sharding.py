"""jaxlm.sharding on 8 fake CPU devices: meshes, parameter and optimizer-state shardings, batches."""

import functools
import os
import socket
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxlm import sharding

BATCH = ("data", "fsdp")


class Toy(nn.Module):
    """Parameters named like the model's: embedding, attention-like and MLP kernels, a LayerNorm."""

    vocab: int = 32

    @nn.compact
    def __call__(self, ids):  # ids: (batch, length)
        part = nn.with_logical_partitioning
        normal = nn.initializers.normal(0.02)
        x = nn.Embed(self.vocab, 16, embedding_init=part(normal, ("vocab", "embed")))(ids)
        # Not nn.DenseGeneral: it applies the 3-d constraint to its 2-d kernel under a mesh (flax #3676).
        query = self.param("query", part(normal, ("embed", "heads", "kv")), (16, 8, 2))
        q = jnp.einsum("ble,ehk->blhk", x, query)  # (batch, length, heads, kv)
        x = x + q.reshape(x.shape)  # (batch, length, heads * kv)
        h = nn.Dense(32, kernel_init=part(normal, ("embed", "mlp")), bias_init=part(nn.zeros, ("mlp",)))(x)
        x = nn.Dense(16, kernel_init=part(normal, ("mlp", "embed")), name="out")(h)
        x = nn.LayerNorm(scale_init=part(nn.ones, ("embed",)), bias_init=part(nn.zeros, ("embed",)))(x)
        return nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))


def _init_state(model, rng):
    ids = jnp.zeros((8, 4), jnp.int32)
    params = model.init(rng, ids)["params"]
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-3))


@functools.cache
def _one_device_params():
    return jax.jit(lambda r: nn.meta.unbox(_init_state(Toy(), r).params))(jax.random.key(0))


def _specs(tree):
    return jax.tree.map(lambda x: x.sharding.spec, tree)


# --- meshes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes, shape",
    [((8, 1, 1), (8, 1, 1)), ((2, 2, 2), (2, 2, 2)), ((-1, 2, 1), (4, 2, 1)), ((1, -1, 4), (1, 2, 4))],
)
def test_make_mesh_shapes(sizes, shape):
    mesh = sharding.make_mesh(*sizes)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape.values()) == shape
    assert mesh.axis_types == (AxisType.Auto,) * 3
    assert mesh.devices.size == 8


@pytest.mark.parametrize(
    "sizes, words",
    [
        ((3, 1, 1), ["config.mesh.data=3", "device count 8"]),
        ((2, 2, 1), ["product 4", "device count 8"]),
        ((3, -1, 1), ["config.mesh.fsdp=-1", "8 devices"]),
        ((-1, -1, 1), ["at most one -1"]),
        ((0, 8, 1), ["positive"]),
    ],
)
def test_make_mesh_errors(sizes, words):
    with pytest.raises(ValueError) as err:
        sharding.make_mesh(*sizes)
    for word in words:
        assert word in str(err.value)


def test_make_mesh_on_given_devices():
    mesh = sharding.make_mesh(1, -1, 2, devices=jax.devices()[:4])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 2}


# --- parameter and optimizer-state shardings ----------------------------------------------------


MODEL_SPECS = {  # the rules applied to Toy's logical names
    "Embed_0": {"embedding": P("tensor", "fsdp")},
    "query": P("fsdp", "tensor", None),
    "Dense_0": {"kernel": P("fsdp", "tensor"), "bias": P("tensor")},
    "out": {"kernel": P("tensor", "fsdp"), "bias": P()},  # bias not boxed: replicated
    "LayerNorm_0": {"scale": P("fsdp"), "bias": P("fsdp")},
}


@pytest.mark.parametrize("sizes", [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)])
def test_state_is_initialised_sharded(sizes):
    mesh = sharding.make_mesh(*sizes)
    model = Toy()
    state, shardings = sharding.init_sharded(lambda r: _init_state(model, r), mesh, jax.random.key(0))

    assert _specs(state.params) == MODEL_SPECS
    adam = state.opt_state[0]
    assert _specs(adam.mu) == MODEL_SPECS and _specs(adam.nu) == MODEL_SPECS
    assert adam.count.sharding.spec == P() and state.step.sharding.spec == P()
    assert jax.tree.map(lambda x: x.sharding, state) == shardings

    # Each device holds 1/n of a dimension sharded over an axis of size n.
    kernel = state.params["Dense_0"]["kernel"]  # (embed 16, mlp 32)
    assert kernel.addressable_shards[0].data.shape == (16 // mesh.shape["fsdp"], 32 // mesh.shape["tensor"])

    # Bitwise the values of an init on one device: sharding changes the layout only.
    jax.tree.map(np.testing.assert_array_equal, state.params, _one_device_params())


def test_abstract_state_needs_no_computation():
    mesh = sharding.make_mesh(1, 4, 2)
    abstract = sharding.abstract_state(lambda r: _init_state(Toy(), r), mesh, jax.random.key(0))
    kernel = abstract.params["out"]["kernel"]
    assert isinstance(kernel, jax.ShapeDtypeStruct)
    assert kernel.shape == (32, 16) and kernel.sharding == NamedSharding(mesh, P("tensor", "fsdp"))


def test_non_divisible_dimension_is_replicated(caplog):
    mesh = sharding.make_mesh(1, 2, 4)
    with sharding.mesh_context(mesh):  # as the trainer calls it: the model's constraints are live
        state, _ = sharding.init_sharded(lambda r: _init_state(Toy(vocab=30), r), mesh, jax.random.key(0))
    # 30 rows do not split over tensor=4: the vocab dim is whole, embed is still split over fsdp.
    assert state.params["Embed_0"]["embedding"].sharding.spec == P(None, "fsdp")
    assert state.opt_state[0].mu["Embed_0"]["embedding"].sharding.spec == P(None, "fsdp")
    assert state.params["Dense_0"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert sum("Replicating dims [0] of ('vocab', 'embed')" in r.message for r in caplog.records) == 1


def test_unknown_logical_name_is_an_error():
    boxed = {"w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((4, 4), jnp.float32), ("embed", "emebd"))}
    with pytest.raises(ValueError, match="emebd"):
        sharding.state_shardings(boxed, sharding.make_mesh(8, 1, 1))


def test_activation_constraint_in_model():
    mesh = sharding.make_mesh(2, 2, 2)
    model = Toy()
    state, _ = sharding.init_sharded(lambda r: _init_state(model, r), mesh, jax.random.key(0))
    ids = sharding.global_batch({"ids": np.zeros((8, 4), np.int32)}, mesh)["ids"]
    with sharding.mesh_context(mesh):
        out = jax.jit(lambda p, x: model.apply({"params": p}, x))(state.params, ids)
    assert out.sharding.is_equivalent_to(NamedSharding(mesh, P(BATCH, None, None)), out.ndim)


# --- batches ------------------------------------------------------------------------------------


def test_global_batch():
    mesh = sharding.make_mesh(2, 2, 2)
    local = {"ids": np.arange(8 * 3).reshape(8, 3), "label": np.arange(8)}
    batch = sharding.global_batch(local, mesh)
    assert sharding.host_data_shard(mesh) == (0, 1)
    for key, value in local.items():
        assert batch[key].sharding.spec == P(BATCH)
        np.testing.assert_array_equal(batch[key], value)
    # 4 batch shards: each device holds 2 rows; devices along `tensor` hold the same rows.
    assert {s.data.shape for s in batch["ids"].addressable_shards} == {(2, 3)}


def test_global_batch_errors():
    mesh = sharding.make_mesh(2, 2, 2)
    with pytest.raises(ValueError, match=r"config.data.batch_size=6 must be divisible by .*=4"):
        sharding.global_batch({"ids": np.zeros((6, 3))}, mesh)
    with pytest.raises(ValueError, match="leading"):
        sharding.global_batch({"ids": np.zeros((8, 3)), "label": np.zeros(4)}, mesh)


def test_one_batch_size_rule_for_training_and_compile():
    """Each of the data x fsdp devices' rows must split into the accumulation's micro-batches: 12 rows on 4
    devices are 3 each, which 2 micro-batches cannot share without moving rows between devices."""
    mesh = sharding.make_mesh(2, 2, 2)
    sharding.check_batch_size("batch_size", 16, mesh, accumulate=2)
    sharding.check_batch_size("eval_batch_size", 12, mesh)
    with pytest.raises(ValueError, match=r"^config.data.batch_size=12 must be divisible by config.mesh.data\*"
                                         r"config.mesh.fsdp\*config.optim.accumulate=8$"):
        sharding.check_batch_size("batch_size", 12, mesh, accumulate=2)
    with pytest.raises(ValueError, match=r"^config.data.eval_batch_size=6 must be divisible by config.mesh.data\*"
                                         r"config.mesh.fsdp=4$"):
        sharding.check_batch_size("eval_batch_size", 6, mesh)


MULTIHOST = textwrap.dedent(
    """
    import sys
    import flax.linen as nn, jax, numpy as np
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from jaxlm import sharding
    pid = jax.process_index()
    for sizes in [(2, 2, 2), (1, 2, 4), (1, 1, 8)]:
        mesh = sharding.make_mesh(*sizes)
        index, count = sharding.host_data_shard(mesh)
        rows = 8 // count
        local = np.arange(index * rows, (index + 1) * rows) * 10  # this host's rows of the global batch
        x = sharding.global_batch({"x": local}, mesh)["x"]
        assert x.shape == (8,), x.shape
        for shard in x.addressable_shards:
            np.testing.assert_array_equal(shard.data, np.arange(8)[shard.index] * 10)
        print(pid, sizes, index, count, flush=True)

    # Parameters created sharded across both processes hold the values of a one-device init.
    init = nn.with_logical_partitioning(jax.nn.initializers.normal(1.0), ("embed", "mlp"))
    mesh = sharding.make_mesh(1, 2, 4)
    w, _ = sharding.init_sharded(lambda r: init(r, (16, 32)), mesh, jax.random.key(0))
    expected = np.asarray(jax.jit(lambda r: init(r, (16, 32)).value)(jax.random.key(0)))  # on one local device
    for shard in w.addressable_shards:
        np.testing.assert_array_equal(shard.data, expected[shard.index])
    print(pid, "init", w.sharding.spec, flush=True)
    """
)


def test_two_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "multihost.py"
    script.write_text(MULTIHOST)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), f"127.0.0.1:{port}", str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    lines = {line for out in outs for line in out.splitlines() if line[:2] in ("0 ", "1 ")}
    # Hosts split the batch when the batch axes span them, and read the same rows when only tensor does.
    assert lines == {
        "0 (2, 2, 2) 0 2", "1 (2, 2, 2) 1 2",
        "0 (1, 2, 4) 0 2", "1 (1, 2, 4) 1 2",
        "0 (1, 1, 8) 0 1", "1 (1, 1, 8) 0 1",
        "0 init P('fsdp', 'tensor')", "1 init P('fsdp', 'tensor')",
    }
