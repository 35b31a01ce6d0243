"""Ahead-of-time compilation of the train step for a TPU topology, on any machine (libtpu, no TPU needed).

    jaxlm compile --config experiments/FILE.py[:variant] --topology v5e-16 [--config.FIELD=VALUE ...]

The step compiled is the trainer's own (the task's `train_step` on the abstract state `jaxlm.experiment` derives),
for the config's model, optimizer, mesh and global batch, on the devices libtpu describes for the
topology. The report: memory per device (arguments, outputs, temporaries), the FLOPs of a step, and the
largest global batch that fits (compiles, searched by bisection). XLA refuses a program that does not fit
in a chip's HBM: that is the answer to "will it fit", found before a TPU is paid for.

Needs libtpu: `pip install 'jax[tpu]==0.10.2'` (about 0.7 GB).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time

import jax

from jaxlm import experiment, sharding
from jaxlm.models import transformer

GIB = 1024**3

# gcloud accelerator type -> (libtpu topology, chip config, HBM per chip in GiB). In v4 and v5p types the
# number counts TensorCores (two per chip, which jax drives as one device: 'megacore'), so v4-32 is 16 chips;
# in v5e ('v5litepod', also written v5e) and v6e types it counts chips.
TOPOLOGIES: dict[str, tuple[str, str, float]] = {
    **{f"v4-{2 * n}": (f"v4:{t}", "megacore", 32) for n, t in (
        (4, "2x2x1"), (8, "2x2x2"), (16, "2x2x4"), (32, "2x4x4"), (64, "4x4x4"), (128, "4x4x8"), (256, "4x8x8"))},
    **{f"v5p-{2 * n}": (f"v5p:{t}", "default", 95) for n, t in (
        (4, "2x2x1"), (8, "2x2x2"), (16, "2x2x4"), (32, "2x4x4"), (64, "4x4x4"), (128, "4x4x8"), (256, "4x8x8"))},
    **{f"v5litepod-{n}": (f"v5e:{t}", "default", 16) for n, t in (
        (1, "1x1"), (4, "2x2"), (8, "2x4"), (16, "4x4"), (32, "4x8"), (64, "8x8"), (128, "8x16"), (256, "16x16"))},
    **{f"v6e-{n}": (f"v6e:{t}", "default", 32) for n, t in (
        (1, "1x1"), (4, "2x2"), (8, "2x4"), (16, "4x4"), (32, "4x8"), (64, "8x8"), (128, "8x16"), (256, "16x16"))},
}


ATTENTION = {"explicit": "softmax with attention dropout, XLA", "fused": "jax.nn.dot_product_attention, XLA",
             "splash": "the Pallas splash kernel, Mosaic"}


class DoesNotFit(Exception):
    """The train step needs more memory per device than a chip has (an answer, not a usage error)."""


@dataclasses.dataclass(frozen=True)
class Compiled:
    """One compile of the train step: memory per device in bytes, FLOPs per step (all devices)."""

    batch_size: int
    arguments: int
    outputs: int
    aliased: int  # outputs that reuse donated arguments (the new state in the old one's buffers)
    temporaries: int
    code: int
    flops: float
    seconds: float

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def topology_devices(accelerator: str) -> tuple[str, float, list]:
    """(libtpu topology name, HBM GiB per device, devices) of a gcloud accelerator type, e.g. 'v5e-16'."""
    name = accelerator.replace("v5e-", "v5litepod-")
    if name not in TOPOLOGIES:
        raise ValueError(f"--topology {accelerator}: unknown; expected a gcloud accelerator type, one of "
                         f"{', '.join(TOPOLOGIES)} (or v5e-N for v5litepod-N)")
    if importlib.util.find_spec("libtpu") is None:
        raise ImportError("jaxlm compile needs libtpu to compile for TPUs: pip install 'jax[tpu]==0.10.2'")
    # libtpu takes a lock against other processes using the chips; here there are none, only compilers.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    topology, chip_config, hbm = TOPOLOGIES[name]
    dims = [int(d) for d in topology.split(":")[1].split("x")]
    per_host = (min(dims[0], 2), min(dims[1], 2), 1)
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology, chip_config_name=chip_config,
                                           chips_per_host_bounds=per_host, num_slices=1).devices
    return topology, hbm, list(devices)


class TrainStep:
    """The trainer's jitted train step for `config` on `devices`, and its abstract inputs, ready to compile."""

    def __init__(self, config, devices):
        self.config, self.devices = config, devices
        # Without the data: classification labels from config.task.num_labels when set.
        exp = experiment.Experiment.from_config(config, experiment.vocab_size(config), devices, read_data=False)
        self.model_config, self.task, self.mesh = exp.model_config, exp.task, exp.mesh
        self.unit = sharding.batch_unit(self.mesh, config.optim.accumulate)  # batch sizes: multiples of it
        tx, _ = exp.optimizer(config.train.num_steps or 1)
        key = jax.eval_shape(lambda: jax.random.key(0))  # abstract: no array on this machine's devices
        self.state = exp.abstract_state(tx, key)
        self.step = exp.task.train_step(exp.model, tx, self.mesh, jax.tree.map(lambda x: x.sharding, self.state),
                                        config.optim.accumulate)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self.rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated)

    def compile(self, batch_size: int) -> Compiled:
        """Compile at global `batch_size`; DoesNotFit when XLA runs out of HBM."""
        sharding.check_batch_size("batch_size", batch_size, self.mesh, self.config.optim.accumulate)
        rows = sharding.batch_sharding(self.mesh)
        batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
                 for k, (shape, dtype) in self.task.batch_spec(batch_size).items()}
        start = time.perf_counter()
        with sharding.mesh_context(self.mesh):
            try:
                compiled = self.step.lower(self.state, batch, self.rng).compile()
            except jax.errors.JaxRuntimeError as e:
                if "RESOURCE_EXHAUSTED" in str(e):
                    raise DoesNotFit(str(e).split("\n")[0]) from None
                raise
        memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
        return Compiled(batch_size, memory.argument_size_in_bytes, memory.output_size_in_bytes,
                        memory.alias_size_in_bytes, memory.temp_size_in_bytes, memory.generated_code_size_in_bytes,
                        float(cost["flops"]) * len(self.devices), time.perf_counter() - start)


def largest_batch(fits, unit: int, start: int, limit: int = 1 << 20) -> tuple[int, int | None]:
    """(largest batch found to fit, smallest found not to) among multiples of `unit`, from `start` (one of
    them): doubling up or halving down to a bracket, then bisection to within max(unit, 1/8 of the
    answer). `fits` must be monotone. (0, unit) when not even `unit` fits; (b, None) when b hits `limit`."""
    if fits(start):
        lo, hi = start, None
        while hi is None:
            if lo * 2 > limit:
                return lo, None
            lo, hi = (lo * 2, None) if fits(lo * 2) else (lo, lo * 2)
    else:
        lo, hi = 0, start
        while lo == 0:
            b = hi // 2 // unit * unit
            if b < unit:
                return 0, unit
            lo, hi = (b, hi) if fits(b) else (0, b)
    while hi - lo > max(unit, lo // 8):
        mid = (lo + hi) // 2 // unit * unit
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi


def report(config, accelerator: str, search: bool = True) -> dict:
    """Compile the train step of `config` for `accelerator` (e.g. 'v5e-16'): memory, FLOPs, largest batch.

    Raises DoesNotFit when the configured batch does not fit (naming the largest that does, if searched)."""
    topology, hbm, devices = topology_devices(accelerator)
    step = TrainStep(config, devices)
    batch_size = config.data.batch_size
    out = {"topology": accelerator, "libtpu_topology": topology, "devices": len(devices),
           "device_kind": devices[0].device_kind, "hbm_gib_per_device": hbm, "mesh": dict(step.mesh.shape),
           "batch_size": batch_size, "seq_length": config.data.max_seq_length}
    results: dict[int, Compiled | None] = {}

    def fits(b: int) -> bool:
        if b not in results:
            try:
                results[b] = step.compile(b)
            except DoesNotFit:
                results[b] = None
        return results[b] is not None and results[b].total <= hbm * GIB

    fits(batch_size)
    if search:
        out["largest_batch"], out["smallest_batch_not_fitting"] = largest_batch(fits, step.unit, batch_size)
    c = results[batch_size]
    if c is None or c.total > hbm * GIB:
        found = f"; the largest batch that fits is {out['largest_batch']}" if out.get("largest_batch") else ""
        need = f"needs {c.total / GIB:.2f} GiB per device" if c else "XLA ran out of HBM"
        raise DoesNotFit(f"config.data.batch_size={batch_size} does not fit on {accelerator} ({hbm:g} GiB per "
                         f"device) with mesh {out['mesh']}: {need}{found}. Shard more (config.mesh.fsdp, "
                         "config.mesh.tensor), recompute (config.model.remat), or lower the batch")
    model_flops = step.task.flops_per_example(step.model_config, config.data.max_seq_length) * batch_size
    out.update(
        memory_gib_per_device={k: getattr(c, k) / GIB for k in ("arguments", "outputs", "aliased", "temporaries",
                                                                "code", "total")},
        hbm_fraction=c.total / (hbm * GIB), flops_per_step=c.flops, model_flops_per_step=model_flops,
        scan_layers=config.model.scan_layers, compile_seconds=c.seconds,
        attention=transformer.attention_path(step.model_config, training=True, length=config.data.max_seq_length,
                                             platform=devices[0].platform),
    )
    return out


def format_report(r: dict) -> str:
    mem = r["memory_gib_per_device"]
    lines = [
        f"{r['topology']} ({r['libtpu_topology']}): {r['devices']} x {r['device_kind']}, {r['hbm_gib_per_device']:g} GiB "
        f"HBM each; mesh {r['mesh']}; global batch {r['batch_size']} x {r['seq_length']} tokens",
        f"memory per device: arguments {mem['arguments']:.3f} GiB, outputs {mem['outputs']:.3f} (of which "
        f"{mem['aliased']:.3f} reuse the donated state), temporaries {mem['temporaries']:.3f}, code {mem['code']:.3f}"
        f" -> {mem['total']:.3f} GiB ({100 * r['hbm_fraction']:.0f}% of HBM)",
        f"FLOPs per step: {r['model_flops_per_step']:.4g} (the model's, as MFU counts them); XLA's count "
        f"{r['flops_per_step']:.4g}" + (" (it counts the scanned layers once)" if r["scan_layers"] else "")
        + (" (it leaves out the splash kernel's)" if r["attention"] == "splash" else ""),
        f"attention: {r['attention']} ({ATTENTION[r['attention']]})",
        f"compiled in {r['compile_seconds']:.1f} s",
    ]
    if "largest_batch" in r:
        above = r["smallest_batch_not_fitting"]
        lines.append(f"largest global batch that fits: {r['largest_batch']}"
                     + (f" ({above} does not)" if above else " (the search limit)"))
    return "\n".join(lines)
