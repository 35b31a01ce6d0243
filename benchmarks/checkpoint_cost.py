"""What asynchronous checkpointing costs the training loop, as a share of training time.

    python benchmarks/checkpoint_cost.py [--steps 300] [--reps 2] [--skip-trainer] [--skip-base]

1. The real trainer (`jaxlm.train.train_and_evaluate`, experiments/demo_cpu.py:pretrain with bert-mini, sequence
   64, batch 32, the embedded corpus) run --steps steps with `checkpoint_every=100` and with checkpoints only
   at the end, in turns (each run a fresh process, as a user runs it). Time is read from metrics.jsonl
   (log every 10 steps) between the first log and the last, so compilation and the final save are left
   out on both sides; the cost is t(every 100) / t(none) - 1, the median over the pairs of runs.
2. bert-base (110M parameters, a 1.3 GB train state with AdamW's moments), sequence 128, batch 8: the same
   jitted `jaxlm.steps.train_step` and `jaxlm.checkpoint.Checkpoints` as the trainer; a window of steps
   with a save started at its beginning vs the same window without, in turns. The extra time per save,
   over 100 steps of the measured step time, is the cost of checkpoint_every=100 at that size.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu, where installed, would otherwise probe for a TPU

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN_RUN = """
import sys
from jaxlm import train
from experiments import demo_cpu
c = demo_cpu.get_config("pretrain")
c.model.preset = "bert-mini"  # the size this benchmark's README numbers were measured at (then with NSP)
c.data.tokenizer = sys.argv[1]
c.data.eval_split = ""
c.train.num_steps = int(sys.argv[3])
c.train.log_every = 10
c.train.checkpoint_every = int(sys.argv[4])
train.train_and_evaluate(c, sys.argv[2])
"""


def trainer_cost(args, tmp: pathlib.Path) -> None:
    from experiments import demo_cpu
    from jaxlm.data.tokenizer import train_tokenizer_from_dataset

    c = demo_cpu.get_config("pretrain")
    tokenizer = tmp / "tokenizer"
    train_tokenizer_from_dataset(c.data.dataset, vocab_size=c.data.vocab_size, model_type=c.data.tokenizer_model_type,
                                 out_dir=tokenizer, max_sentences=c.data.tokenizer_max_sentences, seed=0)
    times = {"none": [], "every 100": []}
    loads = []
    for rep in range(args.reps):
        for name, every in (("none", args.steps), ("every 100", 100)):
            workdir = tmp / f"run-{rep}-{every}"
            loads.append(os.getloadavg()[0])
            subprocess.run([sys.executable, "-c", TRAIN_RUN, str(tokenizer), str(workdir), str(args.steps), str(every)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            logs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
            logs = [r for r in logs if r["split"] == "train"]
            saves = len([s for s in range(logs[0]["step"] + 1, logs[-1]["step"]) if s % every == 0])
            times[name].append((logs[-1]["time"] - logs[0]["time"], logs[-1]["step"] - logs[0]["step"], saves))
            print(f"  {name}: {times[name][-1][0]:.1f} s for steps {logs[0]['step']}-{logs[-1]['step']} "
                  f"({saves} saves inside), load {loads[-1]:.1f}", file=sys.stderr, flush=True)
    cost = statistics.median(b[0] / a[0] - 1 for a, b in zip(times["none"], times["every 100"]))
    step_s = statistics.median(t / n for t, n, _ in times["none"])
    print(f"\n1. trainer, bert-mini seq 64 batch 32 ({args.steps} steps, {args.reps} pairs of runs, load "
          f"{min(loads):.1f}-{max(loads):.1f}): step {step_s * 1e3:.0f} ms; checkpoint_every=100 costs {cost:+.1%} "
          f"of training time (runs: none {[round(t[0], 1) for t in times['none']]} s, every 100 "
          f"{[round(t[0], 1) for t in times['every 100']]} s)")


def base_cost(args, tmp: pathlib.Path) -> None:
    import jax

    from jaxlm import checkpoint, optim, sharding, steps, train_state
    from jaxlm.models import bert
    from jaxlm.tasks.pretrain import Pretrain

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from train_step import make_batch

    cfg = bert.preset("bert-base")
    model = bert.BertForPreTraining(cfg)
    tx, _ = optim.make_optimizer(types.SimpleNamespace(
        name="adamw", learning_rate=1e-4, warmup_steps=0, num_steps=1_000_000, schedule="linear",
        weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0))
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    arrays = make_batch(8, 128)
    for k in ("every_ids", "every_weights"):
        arrays.pop(k)
    state, shardings = train_state.init(model, tx, mesh, jax.random.key(0), max_seq_length=128)
    step_fn = steps.jit_train_step(model, Pretrain.loss, tx, mesh, shardings, accumulate=1)
    with sharding.mesh_context(mesh):
        batch = jax.device_put(arrays, sharding.batch_sharding(mesh))
        rng = jax.random.key(1)
        state, metrics = step_fn(state, batch, rng)
        jax.block_until_ready(metrics)
    size = sum(x.nbytes for x in jax.tree.leaves(state))
    ckpts = checkpoint.Checkpoints(tmp / "base", keep=2, identity={"benchmark": "checkpoint_cost"})
    holder = {"state": state, "step": 1}

    def window(save: bool) -> tuple[float, float]:
        start = time.perf_counter()
        blocking = 0.0
        if save:
            ckpts.save(holder["step"], holder["state"], {"step": holder["step"]})
            blocking = time.perf_counter() - start
        for _ in range(args.window):
            holder["state"], metrics = step_fn(holder["state"], batch, rng)
            holder["step"] += 1
        jax.block_until_ready(metrics)
        ckpts.wait()
        return time.perf_counter() - start, blocking

    window(False)
    plain, saving, loads = [], [], []
    for _ in range(args.reps):
        loads.append(os.getloadavg()[0])
        plain.append(window(False))
        saving.append(window(True))
    ckpts.close()
    step_s = statistics.median(t for t, _ in plain) / args.window
    extra = statistics.median(s[0] - p[0] for p, s in zip(plain, saving))
    blocking = statistics.median(b for _, b in saving)
    print(f"\n2. bert-base seq 128 batch 8, train state {size / 2**30:.2f} GiB ({args.reps} pairs of {args.window}-step "
          f"windows, load {min(loads):.1f}-{max(loads):.1f}): step {step_s:.2f} s; one async save adds {extra:.1f} s "
          f"to its window ({blocking:.2f} s of it blocking the loop) = {extra / (100 * step_s):.1%} of 100 steps")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--steps", type=int, default=300, help="trainer steps per run (bert-mini)")
    p.add_argument("--reps", type=int, default=2, help="pairs of runs / windows")
    p.add_argument("--window", type=int, default=6, help="bert-base steps per window")
    p.add_argument("--skip-trainer", action="store_true")
    p.add_argument("--skip-base", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_trainer:
            trainer_cost(args, pathlib.Path(tmp))
        if not args.skip_base:
            base_cost(args, pathlib.Path(tmp))


if __name__ == "__main__":
    main()
