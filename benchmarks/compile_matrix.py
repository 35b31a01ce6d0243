"""The train step compiled ahead of time for TPU generations x meshes: memory per device, FLOPs, compile time.

    python benchmarks/compile_matrix.py                                  # bert-base, 4 topologies x 3 meshes
    python benchmarks/compile_matrix.py --topologies v5e-16 --meshes dp,fsdp --search   # + the largest batch
    python benchmarks/compile_matrix.py --preset bert-large --seq 512 --batch 128 --dtype bfloat16

Each row is `jaxlm compile` (`jaxlm.aot.report`) for one gcloud accelerator type and one mesh:

    dp        data=N                 parameters and optimizer state replicated on every chip
    fsdp      fsdp=N                 parameters and optimizer state sharded over all chips
    fsdp_tp   fsdp=N/4, tensor=4     and attention heads / MLP / vocabulary split 4 ways

Needs libtpu (`pip install 'jax[tpu]==0.10.2'`), no TPU. On 2 CPU cores one bert-base compile takes minutes:
the full matrix is tens of minutes (`pytest -m slow tests/test_compile.py` runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxlm import aot  # noqa: E402
from jaxlm import config as jaxlm_config  # noqa: E402

TOPOLOGIES = ("v5e-16", "v4-32", "v5p-32", "v6e-8")
MESHES = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1), "fsdp_tp": (1, -1, 4)}


def config_for(preset: str, mesh: str, batch: int, seq: int, dtype: str):
    c = jaxlm_config.base()
    c.model.preset = preset
    c.data.batch_size, c.data.max_seq_length = batch, seq
    c.train.dtype = dtype
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = MESHES[mesh]
    return c


def matrix(topologies, meshes, preset="bert-base", batch=256, seq=128, dtype="float32", search=False):
    """One dict per (topology, mesh): the report, or {'does_not_fit': message}."""
    rows = []
    for topology in topologies:
        for mesh in meshes:
            try:
                report = aot.report(config_for(preset, mesh, batch, seq, dtype), topology, search=search)
            except aot.DoesNotFit as e:
                report = {"topology": topology, "does_not_fit": str(e)}
            rows.append({"mesh_name": mesh, **report})
            print(_row(rows[-1]), flush=True)
    return rows


def _row(r: dict) -> str:
    if "does_not_fit" in r:
        return f"{r['topology']:>10} {r['mesh_name']:>8}  does not fit: {r['does_not_fit'][:120]}"
    m = r["memory_gib_per_device"]
    largest = f" {r['largest_batch']:>8}" if "largest_batch" in r else ""
    return (f"{r['topology']:>10} {r['mesh_name']:>8} {m['arguments']:>9.3f} {m['temporaries']:>9.3f} {m['total']:>9.3f}"
            f" {100 * r['hbm_fraction']:>5.0f}% {r['model_flops_per_step']:>10.3g} {r['compile_seconds']:>8.0f}{largest}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument("--meshes", default=",".join(MESHES))
    p.add_argument("--preset", default="bert-base")
    p.add_argument("--batch", type=int, default=256, help="global batch")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--search", action="store_true", help="also search the largest batch that fits (slow)")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    meshes = args.meshes.split(",")
    unknown = sorted(set(meshes) - set(MESHES))
    if unknown:
        p.error(f"--meshes: unknown {unknown}; expected some of {sorted(MESHES)}")
    print(f"{args.preset}, global batch {args.batch} x {args.seq}, {args.dtype}; memory in GiB per device")
    print(f"{'topology':>10} {'mesh':>8} {'arguments':>9} {'temps':>9} {'total':>9} {'HBM':>6} {'FLOPs/step':>10}"
          f" {'compile s':>8}" + (f" {'largest':>8}" if args.search else ""))
    rows = matrix(args.topologies.split(","), meshes, args.preset, args.batch, args.seq, args.dtype, args.search)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
