"""BERT pretraining train step: jaxlm beside transformers' PyTorch `BertForPreTraining` and KerasHub's BERT.

    python benchmarks/train_step.py                      # bert-mini, bert-medium, bert-base at 128 and 512
    python benchmarks/train_step.py --quick              # bert-mini and bert-base at 128
    python benchmarks/train_step.py --shapes bert-base:128,bert-base:512 --batch 8,2
    python benchmarks/train_step.py --quick --mode fwdbwd  # forward + backward only (no optimizer update)
    python benchmarks/train_step.py --device gpu --dtype bfloat16 ...   # what benchmarks/gpu.sh runs
    bash benchmarks/keras_env.sh                         # once: the KerasHub side's environment (--keras)

The step: MLM (15% of the positions, BERT's 20 of 128 and 77 of 512) + NSP on one synthetic batch (the
same arrays on every side: random token ids, two segments, no padding), AdamW (weight decay 0.01 off
biases and LayerNorm, global-norm clipping at 1.0), dropout 0.1 in train mode.

  jaxlm   `jaxlm.steps.train_step` (what `jaxlm.train` runs) under `jax.jit` with the shardings of a
          one-device mesh and the state donated; compiled ahead of time (the compile column).
  torch   transformers' `BertForPreTraining` in train mode (its default attention, SDPA), `torch.optim.AdamW`,
          torch.set_num_threads(cores); labels at every position, as HF computes the MLM loss.
  keras   KerasHub's `BertMaskedLM` on a `BertBackbone` of the same shape, keras 3 on the JAX backend
          (benchmarks/keras_worker.py, in its own environment benchmarks/.venv-keras that
          benchmarks/keras_env.sh makes; on by default when it exists): `compile()` with AdamW,
          `train_on_batch` in a loop (jit-compiled). MLM logits at the masked positions only, and MLM
          alone: KerasHub's BERT has no NSP head, so its step skips the pooler's backward and the NSP
          classifier (under 0.1% of the FLOPs). CPU, `--mode train` and attention dropout 0.1 only (its
          backbone has one dropout rate); its compile column is its first call less one step.

Rows per shape:
  same    both compute MLM logits at every position (the same FLOPs)
  best    each side its own best way: jaxlm gathers the masked positions before the vocabulary projection;
          torch as transformers ships it (`--torch-gather` adds a torch that gathers too, written by hand);
          keras as KerasHub ships it (gathers too). The keras columns are filled on this row only.

Each side runs in its own worker process (one per jaxlm variant), so peak host memory is that process's
ru_maxrss (what XLA allocates included). The workers take turns - jaxlm, torch, keras, jaxlm, torch, keras,
... - and each figure is the median of `--reps` turns; a ratio is the median of the ratios of the two sides'
turns in the same round, so a load that drifts during the run moves both sides alike. MFU uses
`jaxlm.monitor.train_flops_per_example` (encoder, attention, MLM head at the masked positions: the FLOPs the
job needs, on every row) against the machine's matmul peak: the faster of jax's and torch's float32
2048x2048 matmul (bf16 8192 on a GPU), measured in the same run. The load average is printed beside the
table: on a shared machine, compare ratios from one run rather than absolute numbers across runs.

`--attention-dropout 0` lets jaxlm's `model.attention='auto'` leave the explicit softmax: cuDNN's fused attention
on GPU (bf16), the Pallas splash kernel on TPU; `--attention-dropout 0 --model-overrides '{"attention": "fused"}'`
pins XLA's (a forced path without dropout: with the default 0.1 the config is refused).

`--mode fwdbwd` times forward + backward only (gradients, no optimizer update) on jaxlm and torch: the
forward + backward figure of the foundation issue.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

VOCAB = 30522
DEFAULT_SHAPES = ["bert-mini:128", "bert-mini:512", "bert-medium:128", "bert-medium:512", "bert-base:128",
                  "bert-base:512"]
QUICK_SHAPES = ["bert-mini:128", "bert-base:128"]
# Batch per (preset, length) on 2 CPU cores: a step of a few seconds at most.
CPU_BATCH = {("bert-mini", 128): 32, ("bert-mini", 512): 8, ("bert-medium", 128): 16, ("bert-medium", 512): 4,
             ("bert-base", 128): 8, ("bert-base", 512): 2}
GPU_BATCH = {128: 128, 512: 32}
LAYERS = {  # (layers, hidden, heads, intermediate) of the presets benchmarked; jaxlm's own preset is checked
    "bert-mini": (4, 256, 4, 1024), "bert-small": (4, 512, 8, 2048), "bert-medium": (8, 512, 8, 2048),
    "bert-base": (12, 768, 12, 3072), "bert-large": (24, 1024, 16, 4096),
}
H200_SPEC_PEAK, H200_MEASURED_PEAK = 989e12, 790e12
HERE = os.path.dirname(os.path.abspath(__file__))
KERAS_PYTHON = os.path.join(HERE, ".venv-keras", "bin", "python")  # benchmarks/keras_env.sh makes it


def predictions_of(length: int) -> int:
    return round(0.15 * length)


def make_batch(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One pretraining batch, in both layouts: `masked_positions` (gathered) and labels at every position."""
    r = np.random.default_rng(seed)
    preds = predictions_of(length)
    ids = r.integers(1000, VOCAB, (batch, length)).astype(np.int32)
    ids[:, 0], ids[:, length // 2 - 1], ids[:, -1] = 101, 102, 102  # [CLS] A [SEP] B [SEP]
    positions = np.sort(np.stack([r.choice(np.arange(1, length - 1), preds, replace=False) for _ in range(batch)]), 1)
    positions = positions.astype(np.int32)  # (batch, predictions)
    masked_ids = np.take_along_axis(ids, positions, 1)
    segments = np.zeros((batch, length), np.int32)
    segments[:, length // 2:] = 1
    every_ids, every_weights = np.zeros((batch, length), np.int32), np.zeros((batch, length), np.float32)
    np.put_along_axis(every_ids, positions, masked_ids, 1)
    np.put_along_axis(every_weights, positions, 1.0, 1)
    np.put_along_axis(ids, positions, 103, 1)  # [MASK] in the input
    return dict(
        input_ids=ids, token_type_ids=segments, attention_mask=np.ones((batch, length), np.int32),
        nsp_label=r.integers(0, 2, batch).astype(np.int32), nsp_weight=np.ones(batch, np.float32),
        masked_positions=positions, masked_ids=masked_ids, masked_weights=np.ones((batch, preds), np.float32),
        every_ids=every_ids, every_weights=every_weights,
    )


# ------------------------------------------------------------------------------------------- workers
#
# A worker builds one side's step, then answers commands on stdin, one JSON line each on stdout:
#   {"cmd": "run", "steps": n}  -> {"seconds": ...}      {"cmd": "peak"} -> {"flops": ...}
#   {"cmd": "quit"}             -> {"maxrss_mb": ...}


def _reply(obj) -> None:
    sys.__stdout__.write(json.dumps(obj) + "\n")
    sys.__stdout__.flush()


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve(step, peak, extra=None) -> None:
    import resource

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            cpu = _cpu_seconds()
            seconds = step(cmd["steps"])
            _reply({"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu})
        elif cmd["cmd"] == "peak":
            _reply({"flops": peak()})
        elif cmd["cmd"] == "quit":
            out = {"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            out.update(extra() if extra else {})
            _reply(out)
            return


def build_jax_step(spec: dict):
    """jaxlm's step for `spec` (preset, length, batch_file, variant, mode, dtype, attention_dropout,
    model_overrides), compiled ahead of time: (compiled, state, batch, rng, timings)."""
    import types

    import jax

    from jaxlm import optim, sharding, steps, train_state
    from jaxlm.models import bert
    from jaxlm.tasks.pretrain import Pretrain

    t0 = time.perf_counter()
    dtype = {"float32": "float32", "bfloat16": "bfloat16"}[spec["dtype"]]
    cfg = bert.preset(spec["preset"], vocab_size=VOCAB, dtype=jax.numpy.dtype(dtype),
                      attention_dropout=spec["attention_dropout"], **spec["model_overrides"])
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == LAYERS[spec["preset"]]
    model = bert.BertForPreTraining(cfg)
    tx, _ = optim.make_optimizer(types.SimpleNamespace(
        name="adamw", learning_rate=1e-4, warmup_steps=0, num_steps=1_000_000, schedule="linear",
        weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0))
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    arrays = dict(np.load(spec["batch_file"]))
    if spec["variant"] == "every":  # labels at every position: no masked_positions, logits everywhere
        arrays["masked_ids"], arrays["masked_weights"] = arrays.pop("every_ids"), arrays.pop("every_weights")
        arrays.pop("masked_positions")
    else:
        arrays.pop("every_ids"), arrays.pop("every_weights")
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state, shardings = train_state.init(model, tx, mesh, jax.random.key(0), max_seq_length=spec["length"])
    with sharding.mesh_context(mesh):
        batch = jax.device_put(arrays, sharding.batch_sharding(mesh))
        rng = jax.random.key(1)
        if spec["mode"] == "train":
            fn = steps.jit_train_step(model, Pretrain.loss, tx, mesh, shardings, accumulate=1)
        else:  # forward + backward: the gradients train_step computes, without the update
            def fwd_bwd(state, batch, rng):
                def loss_fn(params, micro_batch, r):
                    out = model.apply({"params": params}, micro_batch, deterministic=False, rngs={"dropout": r})
                    return Pretrain.loss(out, micro_batch)

                grads, sums, _, _ = optim.accumulate_gradients(
                    loss_fn, state.params, optim.split_micro_batches(batch, 1), rng)
                return state, (grads, sums)

            fn = jax.jit(fwd_bwd, in_shardings=(shardings, sharding.batch_sharding(mesh), replicated),
                         donate_argnums=(0,))
        setup_s = time.perf_counter() - t0
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        compiled = fn.lower(state, batch, rng).compile()
        compile_s, compile_cpu_s = time.perf_counter() - t0, _cpu_seconds() - cpu0
    return compiled, state, batch, rng, dict(setup_s=setup_s, compile_s=compile_s, compile_cpu_s=compile_cpu_s)


def jax_worker(spec: dict) -> None:
    import jax

    from jaxlm import monitor

    compiled, state, batch, rng, timings = build_jax_step(spec)
    holder = {"state": state}

    def step(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            holder["state"], metrics = compiled(holder["state"], batch, rng)
        jax.block_until_ready((holder["state"], metrics))
        return time.perf_counter() - start

    first = step(1)
    gpu = jax.devices()[0].platform == "gpu"

    def peak() -> float:
        if gpu:
            n, dt = 8192, jax.numpy.bfloat16
            x = jax.random.normal(jax.random.key(0), (n, n), dt)
            f = jax.jit(lambda a: a @ a)
            f(x).block_until_ready()
            best = float("inf")
            for _ in range(10):
                t = time.perf_counter()
                f(x).block_until_ready()
                best = min(best, time.perf_counter() - t)
            return 2 * n**3 / best
        return monitor.measured_matmul_peak(n=2048, repeats=5)

    def extra():
        if gpu:
            stats = jax.devices()[0].memory_stats() or {}
            return {"device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20}
        return {}

    _reply({"ready": True, **timings, "first_step_s": first,
            "device": jax.devices()[0].device_kind, "versions": f"jax {jax.__version__}"})
    _serve(step, peak, extra)


def torch_worker(spec: dict) -> None:
    import torch
    import transformers

    t0 = time.perf_counter()
    gpu = spec["device"] == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores, or the one --threads 1 pins to
    torch.manual_seed(0)
    layers, hidden, heads, inter = LAYERS[spec["preset"]]
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=inter, max_position_embeddings=512, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=spec["attention_dropout"], hidden_act="gelu")
    model = transformers.BertForPreTraining(config).to(device).train()
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.999), eps=1e-6)
    a = {k: torch.from_numpy(v).to(device) for k, v in np.load(spec["batch_file"]).items()}
    labels = torch.where(a["every_weights"] > 0, a["every_ids"].long(), torch.full_like(a["every_ids"].long(), -100))
    nsp = a["nsp_label"].long()
    inputs = dict(input_ids=a["input_ids"].long(), token_type_ids=a["token_type_ids"].long(),
                  attention_mask=a["attention_mask"].long())
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["dtype"] == "bfloat16")
    ce = torch.nn.functional.cross_entropy

    def loss_of() -> torch.Tensor:
        with autocast:
            if spec["variant"] == "gather":  # what a user of transformers would write to gather first
                seq, pooled = model.bert(**inputs)[:2]
                pos = a["masked_positions"].long()[..., None].expand(-1, -1, hidden)
                scores = model.cls.predictions(torch.gather(seq, 1, pos))  # (batch, predictions, vocab)
                return ce(scores.float().flatten(0, 1), a["masked_ids"].long().flatten()) + ce(
                    model.cls.seq_relationship(pooled).float(), nsp)
            return model(**inputs, labels=labels, next_sentence_label=nsp).loss

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def step(n: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(n):
            loss = loss_of()
            loss.backward()
            if spec["mode"] == "train":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    setup_s = time.perf_counter() - t0
    first = step(1)

    def peak() -> float:
        n, dt = (8192, torch.bfloat16) if gpu else (2048, torch.float32)
        x = torch.randn(n, n, dtype=dt, device=device)
        x @ x
        best = float("inf")
        for _ in range(10 if gpu else 5):
            sync()
            t = time.perf_counter()
            x @ x
            sync()
            best = min(best, time.perf_counter() - t)
        return 2 * n**3 / best

    def extra():
        return {"device_peak_mb": torch.cuda.max_memory_allocated() / 2**20} if gpu else {}

    _reply({"ready": True, "setup_s": setup_s, "compile_s": None, "first_step_s": first,
            "device": torch.cuda.get_device_name() if gpu else f"cpu x{torch.get_num_threads()} threads",
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                        f"attention {model.config._attn_implementation}"})
    _serve(step, peak, extra)


# ------------------------------------------------------------------------------------------- the parent


class Worker:
    def __init__(self, side: str, spec: dict):
        env = dict(os.environ)
        if spec["device"] == "cpu":
            env["JAX_PLATFORMS"] = "cpu"  # libtpu, where installed, would otherwise probe for a TPU
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:  # several workers share the GPU: no worker may grab 75% of its memory up front
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        root = os.path.dirname(HERE)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.name = f"{side}:{spec['variant']}"
        if side == "keras":  # its own interpreter, without jaxlm; the environment (XLA_FLAGS) jaxlm's gets
            command = [KERAS_PYTHON, os.path.join(HERE, "keras_worker.py")]
            env["KERAS_BACKEND"] = "jax"
        else:
            command = [sys.executable, os.path.abspath(__file__), "--worker", side]
        self.proc = subprocess.Popen(command + ["--spec", json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited with {self.proc.wait()} (see its stderr above)")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        out = self.ask(cmd="quit")
        self.proc.wait()
        return out


def bench_shape(preset: str, length: int, batch: int, args, tmp: str) -> dict:
    batch_file = os.path.join(tmp, f"{preset}-{length}.npz")
    np.savez(batch_file, **make_batch(batch, length))
    base = dict(preset=preset, length=length, batch_file=batch_file, mode=args.mode, dtype=args.dtype,
                device=args.device, attention_dropout=args.attention_dropout, one_core=args.one_core,
                model_overrides=json.loads(args.model_overrides))
    load_before = os.getloadavg()
    # One worker at a time while building: compile times are not measured against each other's load.
    workers = {}
    if "same" in args.rows:
        workers["jax:every"] = Worker("jax", {**base, "variant": "every"})
    workers["jax:gather"] = Worker("jax", {**base, "variant": "gather"})
    workers["torch:every"] = Worker("torch", {**base, "variant": "every"})
    if args.torch_gather:
        workers["torch:gather"] = Worker("torch", {**base, "variant": "gather"})
    if args.keras:
        workers["keras:gather"] = Worker("keras", {**base, "variant": "gather"})
    # Steps per turn: about --turn-seconds each, judged from the first step.
    steps = {k: max(1, round(args.turn_seconds / max(w.info["first_step_s"], 1e-3) / 2)) for k, w in workers.items()}
    for w, n in zip(workers.values(), steps.values()):
        w.ask(cmd="run", steps=n)  # a second warm-up (allocator, caches)
    tokens = batch * length
    speeds = {k: [] for k in workers}
    cpu_speeds = {k: [] for k in workers}  # tokens per CPU-second of the worker
    peaks = {"jax": [], "torch": []}
    for _ in range(args.reps):
        for k, w in workers.items():
            turn = w.ask(cmd="run", steps=steps[k])
            speeds[k].append(steps[k] * tokens / turn["seconds"])
            cpu_speeds[k].append(steps[k] * tokens / turn["cpu_seconds"])
        peaks["jax"].append(workers["jax:gather"].ask(cmd="peak")["flops"])
        peaks["torch"].append(workers["torch:every"].ask(cmd="peak")["flops"])
    closing = {k: w.close() for k, w in workers.items()}
    load_after = os.getloadavg()
    return dict(preset=preset, length=length, batch=batch, speeds=speeds, cpu_speeds=cpu_speeds, peaks=peaks,
                steps=steps,
                info={k: w.info for k, w in workers.items()}, closing=closing, load=(load_before, load_after))


def keras_unavailable(args) -> str | None:
    """Why the KerasHub side cannot run with these flags, or None."""
    if not os.path.exists(KERAS_PYTHON):
        return "benchmarks/.venv-keras is missing: `bash benchmarks/keras_env.sh` makes it"
    if args.device != "cpu":
        return "its environment's jaxlib is CPU-only"
    if args.mode != "train":
        return "it times train_on_batch, a whole step"
    if args.attention_dropout != 0.1:
        return "KerasHub's backbone has one dropout rate, 0.1 here, attention included"
    return None


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def print_table(results: list[dict], args) -> None:
    flops_of = _flops_fn()
    gpu = args.device == "gpu"
    what = "train step (fwd+bwd+AdamW)" if args.mode == "train" else "forward+backward"
    mfu_note = "MFU vs spec / vs measured" if gpu else "MFU"
    per_cpu = args.one_core  # pinned workers: figures per CPU-second, robust to other processes' load
    keras = args.keras  # a third side, filled on the best row only
    print(f"\n{what}, {args.dtype}, {args.device}, attention dropout {args.attention_dropout}; "
          f"medians of {args.reps} alternating turns" + ("; each worker pinned to one core: ratio and MFU from tokens "
                                                          "per CPU-second" if per_cpu else ""))
    sides = ["jaxlm", "torch"] + (["keras"] if keras else [])
    cols = ([f"{s} tok/s" for s in sides] + [f"{s} tok/CPU-s" for s in sides if per_cpu]
            + ["jaxlm/torch"] + (["jaxlm/keras"] if keras else []) + [f"{mfu_note} {s}" for s in sides]
            + ["compile s (CPU s) " + " / ".join(s for s in sides if s != "torch"),
               "peak RSS MB " + " / ".join(sides), "load 1m"])
    print("| shape (batch) | row | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))

    def each(cell, keys: list) -> list[str]:
        return [cell(k) if k else "-" for k in keys]

    for r in results:
        measured = max(statistics.median(r["peaks"]["jax"]), statistics.median(r["peaks"]["torch"]))
        peaks = [H200_SPEC_PEAK, measured] if gpu else [measured]
        per_token = flops_of(r["preset"], r["length"]) / r["length"]
        torch_key = "torch:every"
        rows = [("same", "jax:every", torch_key)] if "jax:every" in r["speeds"] else []
        rows.append(("best", "jax:gather", torch_key))
        if "torch:gather" in r["speeds"]:
            rows.append(("both gather", "jax:gather", "torch:gather"))
        load = f"{r['load'][0][0]:.1f}-{r['load'][1][0]:.1f}"
        speeds = r["cpu_speeds"] if per_cpu else r["speeds"]
        for row, jk, tk in rows:
            keys = [jk, tk] + (["keras:gather" if row == "best" else None] if keras else [])  # None: "-"
            cells = each(lambda k: f"{statistics.median(r['speeds'][k]):,.0f}", keys)
            if per_cpu:
                cells += each(lambda k: f"{statistics.median(speeds[k]):,.0f}", keys)
            cells += each(lambda k: f"{median_ratio(speeds[jk], speeds[k]):.2f}x", keys[1:])
            # pinned: the peaks were measured on the pinned cores too, so per CPU-second over per-core peak
            cells += each(lambda k: " / ".join(f"{statistics.median(speeds[k]) * per_token / peak:.0%}"
                                               for peak in peaks), keys)
            cells.append(" / ".join(each(lambda k: f"{r['info'][k]['compile_s']:.1f} "
                                                   f"({r['info'][k]['compile_cpu_s']:.1f})", keys[:1] + keys[2:])))
            mem = " / ".join(each(lambda k: f"{r['closing'][k]['maxrss_mb']:.0f}", keys))
            if gpu:
                mem += " (GPU " + " / ".join(each(lambda k: f"{r['closing'][k].get('device_peak_mb', 0):.0f}",
                                                  keys)) + ")"
            cells += [mem, load]
            print(f"| {r['preset']}@{r['length']} ({r['batch']}) | {row} | " + " | ".join(cells) + " |")
    first = results[0]
    jp = statistics.median(x for r in results for x in r["peaks"]["jax"]) / 1e9
    tp = statistics.median(x for r in results for x in r["peaks"]["torch"]) / 1e9
    kind = "bf16 8192^3" if gpu else "float32 2048^3"
    print(f"\nmatmul peak measured in this run ({kind}, best of a few per turn, median over turns): jax {jp:,.0f} "
          f"GFLOP/s, torch {tp:,.0f} GFLOP/s; MFU is against the faster of the two"
          + (f", and against the H200's dense bf16 spec {H200_SPEC_PEAK / 1e12:.0f} TFLOP/s (the device notes "
             f"measured ~{H200_MEASURED_PEAK / 1e12:.0f})" if gpu else ""))
    print(f"jaxlm: {first['info']['jax:gather']['versions']} on {first['info']['jax:gather']['device']}; "
          f"torch: {first['info']['torch:every']['versions']} on {first['info']['torch:every']['device']}")
    if keras:
        print(f"keras: KerasHub BertMaskedLM, {first['info']['keras:gather']['versions']} on "
              f"{first['info']['keras:gather']['device']}: MLM only (KerasHub's BERT has no NSP head), train_on_batch; "
              "its compile figure is its first call less one step")
    print("MFU counts the FLOPs the job needs (MLM head at the masked positions) on every row; "
          "same = MLM logits at every position on jaxlm and torch.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


def _flops_fn():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jaxlm import monitor  # the one FLOPs definition (imports jax; fine in the parent)
    from jaxlm.models import bert

    def flops(preset: str, length: int) -> float:
        return monitor.train_flops_per_example(bert.preset(preset, vocab_size=VOCAB), length, predictions_of(length))

    return flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_SHAPES)}")
    p.add_argument("--shapes", help="comma-separated preset:length, e.g. bert-base:128,bert-base:512")
    p.add_argument("--batch", help="comma-separated batch sizes, one per shape (default: a per-shape table)")
    p.add_argument("--reps", type=int, default=5, help="alternating turns per side (medians)")
    p.add_argument("--turn-seconds", type=float, default=3.0, help="about how long one turn runs")
    p.add_argument("--mode", choices=("train", "fwdbwd"), default="train")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: jaxlm compute dtype (params float32), torch autocast, keras mixed_bfloat16")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--attention-dropout", type=float, default=0.1)
    p.add_argument("--torch-gather", action="store_true", help="add a torch worker that gathers masked positions")
    p.add_argument("--keras", action=argparse.BooleanOptionalAction,
                   help="add KerasHub's BertMaskedLM (keras 3, JAX backend) on the best row; default: on when "
                        "benchmarks/.venv-keras exists (bash benchmarks/keras_env.sh makes it)")
    p.add_argument("--rows", default="same,best", help="'same,best' or 'best' (skips jaxlm's every-position worker)")
    p.add_argument("--model-overrides", default="{}", help='jaxlm model config fields as JSON, e.g. {"remat": "dots"}')
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--one-core", action="store_true",
                   help="pin each worker to one core: tokens per CPU-second, robust to other processes' load")
    p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        sys.stdout = sys.stderr  # stdout carries the protocol; library prints go to stderr
        spec = json.loads(args.spec)
        if spec.get("one_core"):  # before jax or torch start their thread pools, which size to the affinity
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
        (jax_worker if args.worker == "jax" else torch_worker)(spec)
        return
    why = keras_unavailable(args)
    if args.keras and why:
        p.error(f"--keras: {why}")
    if args.keras is None:
        args.keras = why is None
        if why:
            print(f"no KerasHub side (--keras): {why}", file=sys.stderr)
    shapes = args.shapes.split(",") if args.shapes else QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    batches = [int(b) for b in args.batch.split(",")] if args.batch else [None] * len(shapes)
    if len(batches) != len(shapes):
        p.error("--batch needs one size per shape")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, batch in zip(shapes, batches):
            preset, length = shape.split(":")
            length = int(length)
            if batch is None:
                batch = GPU_BATCH[length] if args.device == "gpu" else CPU_BATCH[(preset, length)]
            print(f"{preset}@{length} batch {batch}: building workers, load {os.getloadavg()[0]:.1f} ...",
                  file=sys.stderr, flush=True)
            results.append(bench_shape(preset, length, batch, args, tmp))
    print_table(results, args)


if __name__ == "__main__":
    main()
