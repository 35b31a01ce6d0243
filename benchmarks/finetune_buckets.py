"""Fine-tuning step on real lengths: length buckets (`config.data.buckets`) vs padding every batch to the maximum.

    python benchmarks/finetune_buckets.py [--model minilm] [--max-seq-length 128] [--buckets 16,32,48,64,96]

Data: the wordnet_lexname train split (94k WordNet glosses, 45 classes; Debian `wordnet-base`), tokenised with
the MiniLM WordPiece vocabulary (`jaxlm fetch-minilm`; --tokenizer DIR for another). Model: MiniLM's shape
(6 layers, hidden 384; --model PRESET for a jaxlm preset), freshly initialised (speed does not depend on the
weights), the classification head, AdamW, dropout 0.1: `jaxlm.steps.train_step` under jit with the state
donated, fed by `jaxlm.data.pipeline.Batches` (shuffled, prefetching) exactly as `jaxlm finetune` runs it.

  padded    every batch padded to --max-seq-length (one compiled shape)
  buckets   each batch padded to the smallest bucket holding its longest example; the pipeline groups
            examples by bucket, so a batch needs little padding. One compile per bucket (the table lists them).

Both streams take turns (chunks of --chunk steps, --reps each); tokens/s counts real (non-padding) tokens,
so the ratio is the speed-up on the same data. The load average is printed beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu, where installed, would otherwise probe for a TPU

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxlm import hf, optim, sharding, steps, train_state  # noqa: E402
from jaxlm.data import pipeline, sources  # noqa: E402
from jaxlm.data.classification import classification_examples  # noqa: E402
from jaxlm.data.tokenizer import load_tokenizer  # noqa: E402
from jaxlm.models import bert  # noqa: E402
from jaxlm.tasks.classify import Classify  # noqa: E402

MINILM = pathlib.Path(__file__).resolve().parents[1] / ".cache" / "minilm-l6-v2"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="minilm", help="'minilm' (its config.json) or a jaxlm preset name")
    p.add_argument("--tokenizer", default=str(MINILM), help="a directory with vocab.txt or spm.model")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--buckets", default="16,32,48,64,96")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--chunk", type=int, default=12, help="steps per turn")
    p.add_argument("--reps", type=int, default=6, help="turns per stream")
    args = p.parse_args()

    tokenizer_dir = pathlib.Path(args.tokenizer)
    if tokenizer_dir == MINILM and not MINILM.exists():
        hf.fetch_minilm(MINILM)  # needs the network once (`jaxlm fetch-minilm --out .cache/minilm-l6-v2`)
    tokenizer = load_tokenizer(tokenizer_dir)
    source = sources.open_source("wordnet_lexname", "train")
    buckets = tuple(int(b) for b in args.buckets.split(","))
    streams = {}
    for name, b in (("padded", ()), ("buckets", buckets)):
        examples = classification_examples(source, tokenizer=tokenizer, text_fields=["text"], label_field="label",
                                           max_seq_length=args.max_seq_length, buckets=b)
        streams[name] = pipeline.Batches(examples, args.batch, seed=0, shuffle=True, prefetch=2)
    lengths = examples.lengths
    num_labels = int(examples.arrays["label"].max()) + 1

    if args.model == "minilm":
        cfg = hf.config_from_hf(json.loads((MINILM / "config.json").read_text()))
    else:
        cfg = bert.preset(args.model, vocab_size=tokenizer.vocab_size)
    model = bert.BertForSequenceClassification(cfg, num_labels)
    tx, _ = optim.make_optimizer(types.SimpleNamespace(
        name="adamw", learning_rate=1e-4, warmup_steps=0, num_steps=1_000_000, schedule="linear",
        weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0))
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    batch_sharding = sharding.batch_sharding(mesh)
    rng = jax.random.key(1)
    state, shardings = train_state.init(model, tx, mesh, jax.random.key(0), max_seq_length=args.max_seq_length)
    step_fn = steps.jit_train_step(model, Classify.loss, tx, mesh, shardings, accumulate=1)
    with sharding.mesh_context(mesh):
        # One compile per padded length: the maximum for `padded`, each bucket for `buckets`.
        compiled, compile_s = {}, {}
        for length in sorted({*buckets, args.max_seq_length}):
            if length > args.max_seq_length:
                continue
            sample = jax.device_put(streams["padded"].examples.batch(np.arange(args.batch), 0, length), batch_sharding)
            start = time.perf_counter()
            compiled[length] = step_fn.lower(state, sample, rng).compile()
            compile_s[length] = time.perf_counter() - start

    holder = {"state": state}

    def run(name: str, n: int) -> tuple[float, float, int]:
        """(seconds, real tokens, examples) of n steps of stream `name` (batches from the prefetching pipeline)."""
        real, count = 0.0, 0
        start = time.perf_counter()
        for _ in range(n):
            batch = next(streams[name])
            length = batch["input_ids"].shape[1]
            real += float(batch["attention_mask"].sum())
            count += int(batch["example_weight"].sum())
            holder["state"], metrics = compiled[length](holder["state"], jax.device_put(batch, batch_sharding), rng)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start, real, count

    for name in streams:
        run(name, 2)  # warm-up
    results = {name: [] for name in streams}
    loads = [os.getloadavg()[0]]
    for _ in range(args.reps):
        for name in streams:
            results[name].append(run(name, args.chunk))
        loads.append(os.getloadavg()[0])
    for s in streams.values():
        s.close()

    def total(name):
        seconds, real, count = map(sum, zip(*results[name]))
        return real / seconds, count / seconds

    shown = sorted(compile_s)
    print(f"\nfine-tuning step, wordnet_lexname train ({len(lengths):,} glosses; tokens per example: mean "
          f"{lengths.mean():.1f}, median {np.median(lengths):.0f}, 99th percentile {np.percentile(lengths, 99):.0f}, "
          f"max {lengths.max()}), {args.model} (layers {cfg.num_layers}, hidden {cfg.hidden_size}), batch {args.batch}, "
          f"max_seq_length {args.max_seq_length}; {args.reps} turns of {args.chunk} steps each; load "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print("| stream | real tokens/s | examples/s | share of real tokens in the batch | compiles (s each) |")
    print("|---|---:|---:|---:|---|")
    for name in streams:
        tok_s, ex_s = total(name)
        lens = [args.max_seq_length] if name == "padded" else shown
        compiles = ", ".join(f"{n}: {compile_s[n]:.1f}" for n in lens)
        share = lengths.mean() / args.max_seq_length if name == "padded" else bucket_share(
            streams[name].examples, args.batch)
        print(f"| {name} | {tok_s:,.0f} | {ex_s:,.1f} | {share:.0%} | {compiles} |")
    ratio = statistics.median((r2 / t2) / (r1 / t1) for (t1, r1, _), (t2, r2, _) in
                              zip(results["padded"], results["buckets"]))
    print(f"\nbuckets / padded: {total('buckets')[0] / total('padded')[0]:.2f}x real tokens/s over all turns "
          f"(median of the per-turn ratios {ratio:.2f}x); {jax.devices()[0].device_kind}, jax {jax.__version__}")


def bucket_share(examples, batch_size: int) -> float:
    """Real tokens / padded tokens over an epoch of the bucketed stream (each batch pads to its longest bucket)."""
    order = pipeline.epoch_order(len(examples), batch_size, seed=0, epoch=0, shuffle=True, pad_lengths=examples.pad_lengths)
    lengths, pads = examples.lengths, examples.pad_lengths
    real = padded = 0
    for row in order:
        valid = row[row >= 0]
        real += lengths[valid].sum()
        padded += pads[valid].max() * len(row)
    return real / padded


if __name__ == "__main__":
    main()
