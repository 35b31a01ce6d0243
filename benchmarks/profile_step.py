"""Where jaxlm's pretraining train step spends its time: a profile of the step benchmarks/train_step.py times.

    python benchmarks/profile_step.py                                 # bert-base@128, batch 8, this backend
    python benchmarks/profile_step.py --shape bert-mini:128 --batch 32 --top 20
    python benchmarks/profile_step.py --model-overrides '{"hidden_dropout": 0, "attention_dropout": 0}'
    python benchmarks/profile_step.py --trace-dir /tmp/trace          # keep the trace for TensorBoard / xprof
    python benchmarks/profile_step.py --keras                         # KerasHub's step, the same way

The same step (`jaxlm.steps.jit_train_step`, one synthetic batch, AdamW) runs a few times untraced (the wall
time per step and MFU against the matmul peak measured here), then under `jax.profiler`. Each XLA operation
the trace records (an event with an `hlo_op`) is put in a phase by the name jax gave it when tracing -
forward (`jvp(...)`), backward (`transpose(jvp(...))`), the rest (optimizer, gradient norm, the non-finite
check) - and counted as matmul when its HLO holds a dot or convolution. The figures are busy time per step
summed over the threads or streams that ran operations (two on a 2-core CPU, which overlap: the sum exceeds
the wall time), so read them as shares. "MFU at matmul speed alone" is what MFU would be if every
operation that is not a matmul took no time: the ceiling that fusing and trimming those can reach.

`--keras` profiles KerasHub's BertMaskedLM step (benchmarks/keras_worker.py's model, `train_on_batch`) in its
own environment, benchmarks/.venv-keras, reading its optimized HLO from XLA's dump directory: e.g. it shows
KerasHub's BERT computing the tanh approximation of GELU where jaxlm computes BERT's exact one (erfc).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import train_step as bench  # noqa: E402  (benchmarks/train_step.py: the same step, batch and shapes)

MATMUL = re.compile(r"\b(dot|convolution|custom-call)\(")  # custom-call: cuBLAS / cuDNN on GPU


def hlo_ops(text: str) -> dict[str, tuple[str, bool, str]]:
    """{instruction name: (op_name metadata, holds a matmul, result shape)} of an optimized HLO module."""
    bodies, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and not line.startswith(" "):
            current = bodies.setdefault(head.group(1), [])
        elif current is not None:
            current.append(line)
    ops = {}
    for lines in bodies.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
            if not m:
                continue
            called = re.findall(r"(?:calls|to_apply|body)=%([\w.\-]+)", line)
            matmul = bool(MATMUL.search(line)) or any(MATMUL.search(" ".join(bodies.get(c, []))) for c in called)
            op_name = re.search(r'op_name="([^"]*)"', line)
            ops[m.group(1)] = (op_name.group(1) if op_name else "", matmul, m.group(2))
    return ops


def phase_of(op_name: str) -> str:
    if "transpose(jvp(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "optimizer and the rest"


def busy_per_op(trace_dir: str) -> collections.Counter:
    from jax.profiler import ProfileData

    (path,) = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb"))
    busy = collections.Counter()
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                op = dict(event.stats).get("hlo_op")
                if op:
                    busy[op] += event.duration_ns * 1e-9
    return busy


def measure(run, steps: int, trace_dir: str) -> tuple[float, collections.Counter]:
    """(best wall seconds per step of two timed rounds, busy seconds per op of one traced round)."""
    import jax

    run(2)  # warm-up
    wall = min(run(steps) for _ in range(2))
    jax.profiler.start_trace(trace_dir)
    run(steps)
    jax.profiler.stop_trace()
    return wall, busy_per_op(trace_dir)


def report(title: str, wall: float, tokens: int, flops: float, busy, ops, steps: int, top: int,
           compile_s: float | None) -> None:
    import jax

    from jaxlm import monitor

    peak = monitor.measured_matmul_peak(n=8192 if jax.default_backend() == "gpu" else 2048, repeats=5)
    mfu = flops / wall / peak
    table = collections.Counter()
    for op, seconds in busy.items():
        op_name, matmul, _ = ops.get(op, ("", False, ""))
        table[(phase_of(op_name), "matmul" if matmul else "other")] += seconds / steps
    total = sum(table.values())
    matmul_share = sum(v for (_, kind), v in table.items() if kind == "matmul") / total
    print(f"\n{title}; {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(("" if compile_s is None else f"compile {compile_s:.1f} s; ")
          + f"step {wall * 1e3:,.0f} ms wall = {tokens / wall:,.0f} tokens/s; MFU {mfu:.0%} of the measured "
          f"matmul peak {peak / 1e9:,.0f} GFLOP/s")
    print(f"operations' busy time per step (summed over threads): {total * 1e3:,.0f} ms, of which matmul "
          f"{matmul_share:.0%}; MFU at matmul speed alone: {mfu / matmul_share:.0%}\n")
    print("| phase | matmul ms | other ms | share of busy time |")
    print("|---|---:|---:|---:|")
    for phase in ("forward", "backward", "optimizer and the rest"):
        m, o = table[(phase, "matmul")], table[(phase, "other")]
        print(f"| {phase} | {m * 1e3:,.0f} | {o * 1e3:,.0f} | {(m + o) / total:.0%} |")
    print(f"\nthe {top} costliest operations that are not matmuls (ms per step, summed over threads):")
    others = collections.Counter()
    for op, seconds in busy.items():
        op_name, matmul, shape = ops.get(op, ("", False, ""))
        if not matmul:
            where = re.sub(r"\d+", "", op_name.replace("jit(train_step)/", ""))[-70:]
            others[(re.sub(r"[.\d]+$", "", op), where, re.sub(r"\{.*", "", shape))] += seconds / steps
    for (kind, where, shape), seconds in others.most_common(top):
        print(f"  {seconds * 1e3:7.1f}  {kind:28s} {shape:28s} {where}")


def keras_side(args, spec: dict, flops: float) -> None:
    """In benchmarks/.venv-keras: KerasHub's step (keras_worker.build), its HLO from XLA's dump directory."""
    import keras_worker

    model, run_keras = keras_worker.build(spec)
    run = lambda n: run_keras(n) / n  # noqa: E731
    wall, busy = measure(run, args.steps, args.trace_dir or tempfile.mkdtemp(prefix="keras-profile-"))
    dumped = glob.glob(os.path.join(os.environ["JAXLM_PROFILE_DUMP"], "*after_optimizations.txt"))
    ops = hlo_ops(open(max(dumped, key=os.path.getsize)).read())  # the train function: the largest module
    report(f"KerasHub BertMaskedLM {spec['preset']}@{spec['length']}, batch {args.batch}, {args.dtype}", wall,
           args.batch * spec["length"], flops, busy, ops, args.steps, args.top, None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--shape", default="bert-base:128", help="preset:length")
    p.add_argument("--batch", type=int, help="default: benchmarks/train_step.py's per-shape batch")
    p.add_argument("--steps", type=int, default=3, help="steps timed, and steps traced")
    p.add_argument("--mode", choices=("train", "fwdbwd"), default="train")
    p.add_argument("--variant", choices=("gather", "every"), default="gather",
                   help="MLM logits at the masked positions (gather) or at every position")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--attention-dropout", type=float, default=0.1)
    p.add_argument("--model-overrides", default="{}", help='jaxlm model config fields as JSON, e.g. {"remat": "dots"}')
    p.add_argument("--top", type=int, default=12, help="how many of the costliest operations to list")
    p.add_argument("--trace-dir", help="where to write the trace (default: a temporary directory)")
    p.add_argument("--keras", action="store_true", help="profile KerasHub's BertMaskedLM step instead, in "
                   "benchmarks/.venv-keras (float32, CPU, train mode; its BERT has no NSP head)")
    args = p.parse_args()

    preset, length = args.shape.split(":")
    length = int(length)
    child = os.environ.get("JAXLM_PROFILE_DUMP")  # set in the KerasHub side's own process
    if args.keras and not child:
        why = bench.keras_unavailable(argparse.Namespace(device="cpu", mode=args.mode,
                                                         attention_dropout=args.attention_dropout))
        if why:
            p.error(f"--keras: {why}")
        from jaxlm import monitor  # the FLOPs, from jaxlm's model config (flax is not in the keras environment)
        from jaxlm.models import bert

        batch = args.batch or bench.CPU_BATCH[(preset, length)]
        flops = monitor.train_flops_per_example(bert.preset(preset, vocab_size=bench.VOCAB), length,
                                                bench.predictions_of(length)) * batch
        with tempfile.TemporaryDirectory() as dump:
            env = {**os.environ, "JAXLM_PROFILE_DUMP": dump, "JAXLM_PROFILE_FLOPS": str(flops), "KERAS_BACKEND": "jax",
                   "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text "
                                                        "--xla_dump_hlo_module_re=.*train.*"}
            argv = [*sys.argv[1:], "--batch", str(batch)]  # the last --batch wins
            sys.exit(subprocess.call([bench.KERAS_PYTHON, os.path.abspath(__file__), *argv], env=env))

    import jax

    gpu = jax.default_backend() == "gpu"
    batch = args.batch or (bench.GPU_BATCH[length] if gpu else bench.CPU_BATCH[(preset, length)])
    args.batch = batch
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = os.path.join(tmp, "batch.npz")
        np.savez(batch_file, **bench.make_batch(batch, length))
        spec = dict(preset=preset, length=length, batch_file=batch_file, variant=args.variant, mode=args.mode,
                    dtype=args.dtype, attention_dropout=args.attention_dropout,
                    model_overrides=json.loads(args.model_overrides))
        if child:
            return keras_side(args, spec, float(os.environ["JAXLM_PROFILE_FLOPS"]))
        from jaxlm import monitor
        from jaxlm.models import bert

        compiled, state, inputs, rng, timings = bench.build_jax_step(spec)
    ops = hlo_ops(compiled.as_text())

    def run(n: int) -> float:
        nonlocal state
        start = time.perf_counter()
        for _ in range(n):
            state, out = compiled(state, inputs, rng)
        jax.block_until_ready((state, out))
        return (time.perf_counter() - start) / n

    trace_dir = args.trace_dir or tempfile.mkdtemp(prefix="jaxlm-profile-")
    wall, busy = measure(run, args.steps, trace_dir)
    flops = monitor.train_flops_per_example(bert.preset(preset, vocab_size=bench.VOCAB), length,
                                            bench.predictions_of(length)) * batch
    report(f"jaxlm {preset}@{length}, batch {batch}, {args.dtype}, mode {args.mode}, variant {args.variant}, "
           f"overrides {args.model_overrides}", wall, batch * length, flops, busy, ops, args.steps, args.top,
           timings["compile_s"])
    if args.trace_dir:
        print(f"\ntrace: {trace_dir} (tensorboard --logdir {trace_dir}, profile tab)")


if __name__ == "__main__":
    main()
