"""Speed of the whole BERT pretraining input stream, beside transformers' DataCollatorForLanguageModeling.

    python benchmarks/input_stream.py [--dataset embedded_corpus] [--tokenizer DIR] [--max-seq-length 128]

One core: a process pinned to the first core (what `taskset -c 0` does) builds the examples and streams
one epoch. Then the build alone with 1, 2, 4, ... tokenising processes (`config.data.workers`). All cores: the
examples are built with one tokenising process per core into a cache, then one
process per core, pinned to it, acts as one host of a multi-host run and streams its shard of every global
batch. Stages, over one epoch of the dataset's train split:
  build   read records, split sentences, tokenise, pair into NSP instances (the cached stage)
  stream  lay out, mask and batch (what runs every epoch)
  whole   build + stream: the whole stream (read, tokenise, pair, mask, batch) with nothing cached
tokens/s counts non-padding tokens of the batches. Beside them, transformers' DataCollatorForLanguageModeling
pads and masks the same instances, given as token-id lists (what a tokenised HF dataset holds).
Without --tokenizer, a SentencePiece model (8k pieces) is first trained on the dataset (not timed).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from jaxlm.data import pipeline, pretraining, records, sources
from jaxlm.data import tokenizer as tokenizers


class Repeated:
    """A source read `times` over (a bigger corpus from a small one)."""

    def __init__(self, source, times: int):
        self.source, self.times = source, times

    def __len__(self):
        return len(self.source) * self.times

    def __getitems__(self, indices):
        return self.source.__getitems__([i % len(self.source) for i in indices])


def open_dataset(args):
    return Repeated(sources.open_source(args.dataset, "train", data_dir=args.data_dir, path=args.path), args.repeat)


def examples_of(args, source, tokenizer, cache_dir=None, workers=1):
    spec = pretraining.PretrainingSpec(
        max_seq_length=args.max_seq_length, max_predictions_per_seq=args.max_predictions, whole_word=args.whole_word)
    return pretraining.pretraining_examples(
        source, text_field=args.text_field, tokenizer=tokenizer, spec=spec, seed=0, cache_dir=cache_dir,
        name=f"{args.dataset}*{args.repeat}", workers=workers)


def build_in_cache(args, cache_dir: str, workers: int) -> float:
    """Seconds to build the examples into cache_dir with `workers` tokenising processes."""
    source, tokenizer = open_dataset(args), tokenizers.load_tokenizer(args.tokenizer)
    start = time.perf_counter()
    examples_of(args, source, tokenizer, cache_dir, workers)
    return time.perf_counter() - start


def run_host(args, core: int, host: int, hosts: int, cache_dir: str | None = None) -> dict:
    """One host pinned to `core`: build the examples (or load them from cache_dir), stream its shard of one epoch."""
    os.sched_setaffinity(0, {core})
    source, tokenizer = open_dataset(args), tokenizers.load_tokenizer(args.tokenizer)
    start = time.perf_counter()
    examples = examples_of(args, source, tokenizer, cache_dir)
    built = time.perf_counter()
    batches = pipeline.Batches(examples, args.batch_size, seed=0, process_index=host, process_count=hosts)
    tokens = rows = 0
    for step in range(batches.steps_per_epoch):
        batch = batches.batch_at(step)
        tokens += int(batch["attention_mask"].sum())
        rows += int((batch["nsp_weight"] > 0).sum())
    return {"build": built - start, "stream": time.perf_counter() - built, "tokens": tokens, "examples": rows,
            "corpus_tokens": len(examples.corpus.token_ids)}


def hf_collator_speed(args, core: int, return_tensors: str) -> dict:
    """DataCollatorForLanguageModeling padding and masking the same instances, from token-id lists."""
    from tokenizers import Tokenizer, models
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    os.sched_setaffinity(0, {core})
    tokenizer = tokenizers.load_tokenizer(args.tokenizer)
    examples = examples_of(args, open_dataset(args), tokenizer)
    vocab = {tokenizer.id_to_piece(i): i for i in range(tokenizer.vocab_size)}
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token=tokenizer.id_to_piece(tokenizer.unk_id))),
        **{f"{kind}_token": tokenizer.id_to_piece(token_id) for kind, token_id in tokenizer.special_ids.items()},
    )
    collator = DataCollatorForLanguageModeling(
        hf_tokenizer, mlm_probability=0.15, pad_to_multiple_of=args.max_seq_length, return_tensors=return_tensors)
    inst, token_ids = examples.instances, examples.corpus.token_ids
    features = []  # what a tokenised HF dataset would hold: lists of ids (not timed)
    for a, na, b, nb in zip(*(inst[k].tolist() for k in ("a_start", "a_length", "b_start", "b_length"))):
        ids = [tokenizer.cls_id, *token_ids[a : a + na].tolist(), tokenizer.sep_id,
               *token_ids[b : b + nb].tolist(), tokenizer.sep_id]
        features.append({"input_ids": ids, "token_type_ids": [0] * (na + 2) + [1] * (nb + 1),
                         "special_tokens_mask": [1] + [0] * na + [1] + [0] * nb + [1]})
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(features), args.batch_size):
        batch = collator(features[i : i + args.batch_size])
        tokens += int(batch["attention_mask"].sum())
    return {"stream": time.perf_counter() - start, "tokens": tokens, "examples": len(features)}


def report(name: str, tokens: int, examples: int, seconds: float) -> None:
    print(f"  {name:<44} {tokens / seconds:>12,.0f} tokens/s {examples / seconds:>10,.0f} examples/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="embedded_corpus")
    parser.add_argument("--path", default=None, help="files of a local builder (local_text)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--tokenizer", default=None, help="a saved tokenizer directory")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--max-predictions", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--whole-word", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="read the dataset this many times over")
    args = parser.parse_args()

    source = open_dataset(args)
    if args.tokenizer is None:
        args.tokenizer = tempfile.mkdtemp(prefix="jaxlm-bench-tokenizer-")
        texts = (records.as_text(r[args.text_field]) for r in records.iter_records(source.source))
        tokenizers.train_sentencepiece(texts, vocab_size=8000, out_dir=args.tokenizer)
    cores = sorted(os.sched_getaffinity(0))
    print(f"{args.dataset} x{args.repeat}: {len(source):,} documents, max_seq_length {args.max_seq_length}, "
          f"global batch {args.batch_size}, whole_word {args.whole_word}; {len(cores)} cores")

    def fresh(processes: int):  # new processes, so that nothing is warm from the parent
        return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))

    with fresh(1) as pool:
        one = pool.submit(run_host, args, cores[0], 0, 1).result()
        hf = {t: pool.submit(hf_collator_speed, args, cores[0], t).result() for t in ("pt", "np")}
    print(f"one core (core {cores[0]}): corpus {one['corpus_tokens']:,} tokens, "
          f"{one['examples']:,} instances, {one['tokens']:,} non-padding tokens in the batches")
    report("build (read, split, tokenise, pair)", one["corpus_tokens"], one["examples"], one["build"])
    report("stream (lay out, mask, batch)", one["tokens"], one["examples"], one["stream"])
    report("whole stream, nothing cached", one["tokens"], one["examples"], one["build"] + one["stream"])
    for t, r in hf.items():
        report(f"HF DataCollatorForLanguageModeling ({t})", r["tokens"], r["examples"], r["stream"])

    print("build against the number of tokenising processes (config.data.workers; 0 = all cores):")
    for workers in sorted({*(2**i for i in range(len(cores).bit_length())), len(cores)}):
        cache_dir = tempfile.mkdtemp(prefix="jaxlm-bench-cache-")
        with fresh(1) as pool:
            build = pool.submit(build_in_cache, args, cache_dir, workers).result()
        report(f"build, {workers} process{'es' if workers > 1 else ''}", one["corpus_tokens"], one["examples"], build)
        if workers != len(cores):
            shutil.rmtree(cache_dir)
    with fresh(len(cores)) as pool:
        futures = [pool.submit(run_host, args, core, h, len(cores), cache_dir) for h, core in enumerate(cores)]
        hosts = [f.result() for f in futures]
    shutil.rmtree(cache_dir)
    tokens, examples = sum(h["tokens"] for h in hosts), sum(h["examples"] for h in hosts)
    stream = max(h["stream"] for h in hosts)
    print(f"all {len(cores)} cores (build: {len(cores)} tokenising processes; stream: a host per core):")
    report("build (read, split, tokenise, pair)", one["corpus_tokens"], examples, build)
    report("stream (lay out, mask, batch)", tokens, examples, stream)
    report("whole stream, nothing cached", tokens, examples, build + stream)


if __name__ == "__main__":
    main()
