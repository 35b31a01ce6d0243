"""The device mesh, the logical axis rules, and the shardings of state and batches.

One mesh with three axes serves every device count:

    data    pure data parallelism: the batch is split, parameters are replicated (what `pmap` gives)
    fsdp    the batch is split, and parameters and optimizer state are sharded along `embed`
    tensor  Megatron tensor parallelism: attention heads, MLP and vocabulary are split

Modules name array dimensions logically; `LOGICAL_AXIS_RULES` maps the names onto the mesh.
Parameters and activations use separate names so they can be placed independently: an
`embed` parameter dimension is sharded over `fsdp`, but `activation_embed` is not (the
activations' batch already uses `fsdp`, and the residual stream stays whole for tensor parallelism).

Multi-host: each process loads the rows of the global batch held by its own devices
(`host_data_shard` says which), and `global_batch` assembles the global `jax.Array`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# logical name -> mesh axes (None: replicated). Order matters to flax: a mesh axis is used
# at most once per array, by the first rule that claims it.
LOGICAL_AXIS_RULES: Rules = (
    # Activations.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # Parameters (and the optimizer state that mirrors them).
    ("embed", "fsdp"),
    ("embed_out", None),  # the output side of a square hidden -> hidden kernel (pooler, MLM transform)
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("position", None),
    ("type", None),
    ("labels", None),
    ("layers", None),
)


def make_mesh(data: int, fsdp: int, tensor: int, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all); one size may be -1 to fill."""
    devices = jax.devices() if devices is None else list(devices)
    shape = [data, fsdp, tensor]
    given = ", ".join(f"config.mesh.{a}={n}" for a, n in zip(MESH_AXES, shape))
    fill = [i for i, n in enumerate(shape) if n == -1]
    if len(fill) > 1 or any(n == 0 or n < -1 for n in shape):
        raise ValueError(f"Mesh sizes must be positive, with at most one -1; got {given}.")
    known = math.prod(n for n in shape if n != -1)
    if fill:
        if len(devices) % known:
            raise ValueError(f"{given}: {len(devices)} devices are not divisible by {known}.")
        shape[fill[0]] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"{given}: the product {math.prod(shape)} must equal the device count {len(devices)}"
            " (or set one of them to -1)."
        )
    return jax.make_mesh(
        tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES):
    """Trace model code inside this: it sets the mesh and the rules `nn.with_logical_constraint` reads."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _mesh_axes_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    return math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def _partition_spec(names, shape, mesh: Mesh, rules: Rules) -> tuple[P, list[int]]:
    """Mesh PartitionSpec for logical dimension `names`, and the dims replicated for divisibility."""
    known = {name for name, _ in rules}
    unknown = [n for n in names if n is not None and n not in known]
    if unknown:
        raise ValueError(f"Logical axis names {unknown} (of {names}) have no rule; known: {sorted(known)}.")
    spec = list(nn.logical_to_mesh_axes(names, rules))
    dropped = [i for i, (size, axes) in enumerate(zip(shape, spec)) if size % _mesh_axes_size(mesh, axes)]
    for i in dropped:
        spec[i] = None
    return P(*spec), dropped


def state_shardings(tree: Any, mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Any:
    """NamedShardings for a (possibly abstract) tree whose leaves may be boxed with logical names.

    Boxed leaves (`nn.LogicallyPartitioned` from `nn.with_logical_partitioning`, and the optax
    states built from boxed params, which mirror them) get their logical sharding; other leaves
    (step, rng keys) are replicated. A dimension its mesh axes do not divide (a 30522-row vocabulary
    over tensor=4) is replicated instead, with a warning. The result has the unboxed tree's structure.
    """
    warned = set()

    def one(leaf):
        if not isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, P())
        names, shape = tuple(leaf.names), tuple(leaf.value.shape)
        spec, dropped = _partition_spec(names, shape, mesh, rules)
        if dropped and (names, shape) not in warned:
            warned.add((names, shape))
            log.warning("Replicating dims %s of %s %s: not divisible by their mesh axes.", dropped, names,
                        shape)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _unbox(tree: Any) -> Any:
    """The boxed values, without the sharding constraint `meta.unbox` adds under a mesh: the
    shardings computed here (with their divisibility fallback) place them."""
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x, tree,
        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
    )


def abstract_state(init_fn: Callable[..., Any], mesh: Mesh, *args, rules: Rules = LOGICAL_AXIS_RULES) -> Any:
    """`init_fn(*args)`'s unboxed output as `jax.ShapeDtypeStruct`s carrying their shardings.

    Nothing is computed: this is the target for a checkpoint restore, and the plan for `init_sharded`.
    """
    boxed = jax.eval_shape(init_fn, *args)
    shardings = state_shardings(boxed, mesh, rules)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), _unbox(boxed), shardings)


def init_sharded(
    init_fn: Callable[..., Any], mesh: Mesh, *args, rules: Rules = LOGICAL_AXIS_RULES
) -> tuple[Any, Any]:
    """Run `init_fn(*args)` (returning a possibly boxed pytree) straight into its shards.

    Each device computes only its own shards (`jax.jit(..., out_shardings=...)`); the full
    parameters never exist on one device. Returns (unboxed arrays, their NamedShardings).
    """
    abstract, treedef = jax.tree.flatten(abstract_state(init_fn, mesh, *args, rules=rules))
    shardings = [x.sharding for x in abstract]
    # Leaves only: static fields (a TrainState's tx) made anew by each trace of init_fn need not be equal.
    leaves = jax.jit(lambda *a: jax.tree.leaves(_unbox(init_fn(*a))), out_shardings=shardings)(*args)
    return treedef.unflatten(leaves), treedef.unflatten(shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are split along their leading dimension over ('data', 'fsdp'); other dims are whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def _host_batch_shards(mesh: Mesh) -> tuple[int, int, int]:
    """(first, count, total): this process's devices hold batch shards [first, first + count) of total."""
    total = _mesh_axes_size(mesh, BATCH_AXES)
    index_map = batch_sharding(mesh).addressable_devices_indices_map((total,))
    held = sorted({row for idx in index_map.values() for row in range(*idx[0].indices(total))})
    first, count = held[0], len(held)
    if held != list(range(first, first + count)) or first % count:
        raise ValueError(
            f"Process {jax.process_index()} holds batch shards {held} of {total}: not one contiguous"
            " block; order the mesh devices by process."
        )
    return first, count, total


def host_data_shard(mesh: Mesh) -> tuple[int, int]:
    """(index, count): this process reads data shard `index` of `count`.

    Processes whose devices hold the same rows (a `tensor` axis across hosts) get the same index.
    With one process this is (0, 1).
    """
    first, count, total = _host_batch_shards(mesh)
    return first // count, total // count


def check_batch_size(field: str, size: int, mesh: Mesh, accumulate: int = 1) -> None:
    """A batch splits evenly over the devices that shard it (data x fsdp), and each device's rows over the
    micro-batches of gradient accumulation (so that no row moves between devices): the one rule, checked by
    the trainer at start-up and by `jaxlm compile`."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"config.data.{field}={size}: expected a positive number of rows")
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"config.optim.accumulate={accumulate}: expected a positive number of micro-batches")
    unit = batch_unit(mesh, accumulate)
    if size % unit:
        what = "config.mesh.data*config.mesh.fsdp" + ("*config.optim.accumulate" if accumulate > 1 else "")
        raise ValueError(f"config.data.{field}={size} must be divisible by {what}={unit}")


def batch_unit(mesh: Mesh, accumulate: int = 1) -> int:
    """The number every batch size must be a multiple of (see `check_batch_size`)."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES])) * accumulate


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of the global batch (leading dim) -> global arrays sharded by `batch_sharding`."""
    _, count, total = _host_batch_shards(mesh)
    rows = {k: v.shape[0] for k, v in local_batch.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"Batch arrays differ in their leading (batch) dimension: {rows}.")
    local_rows = next(iter(rows.values()))
    if local_rows % count:  # equivalently: the global batch size is not divisible by data*fsdp
        data_shards = total // count
        raise ValueError(
            f"config.data.batch_size={local_rows * data_shards} must be divisible by"
            f" config.mesh.data*config.mesh.fsdp={total} (this process has {local_rows} rows)."
        )
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local_batch)

