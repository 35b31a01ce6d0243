"""The one trainer: mesh, data, sharded state, jit(step), checkpoints, evaluation; losses come from tasks.

    train_and_evaluate(config, workdir)   pretraining ('pretrain') or fine-tuning ('classify'), resumable
    evaluate_workdir(workdir, split)      metrics of a trained workdir's best checkpoint on a split
    predict(workdir, texts)               labels and probabilities of a fine-tuned classifier

The train step (`jaxlm.steps`) is a pure function (state, batch, rng) -> (state, metric sums),
jit-compiled with the shardings derived from the model's logical axis names, the state donated. Its
randomness is fold_in(rng, step), and the data position is saved with the state: a resumed run is
bitwise the run that was never interrupted (same mesh and software).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlm import checkpoint, distributed, faults, hf, monitor, optim, sharding, train_state
from jaxlm.data import pipeline
from jaxlm.data.tokenizer import load_tokenizer, train_tokenizer_from_dataset
from jaxlm.models import bert
from jaxlm.models.transformer import (TransformerConfig, attention_path, check_splash_length, stack_layers,
                                      unstack_layers)
from jaxlm.steps import eval_step, jit_train_step
from jaxlm.tasks import classify, pretrain

log = logging.getLogger(__name__)
TASKS = {"pretrain": pretrain, "classify": classify}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ------------------------------------------------------------------------------------------- set-up


def _model_dict(model_config: TransformerConfig) -> dict:
    out = dataclasses.asdict(model_config)
    out["dtype"], out["param_dtype"] = jnp.dtype(out["dtype"]).name, jnp.dtype(out["param_dtype"]).name
    return out


def _save_run_files(workdir: pathlib.Path, config, run) -> None:
    """config.json, model.json (the architecture) and labels.json: what evaluate and predict need."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    (workdir / "model.json").write_text(json.dumps(_model_dict(run.model_config), indent=2) + "\n")
    if run.label_names:
        (workdir / "labels.json").write_text(json.dumps(run.label_names) + "\n")


def load_workdir_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; is {workdir} a jaxlm workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def resolve_tokenizer(config, workdir: pathlib.Path):
    """config.data.tokenizer: a directory (spm.model or vocab.txt), 'train' (SentencePiece trained on the
    dataset, kept in workdir/tokenizer), or 'init' (the tokenizer of model.init_from). Saved in the workdir."""
    d, own = config.data, workdir / "tokenizer"
    if (own / "spm.model").exists() or (own / "vocab.txt").exists():
        return load_tokenizer(own)
    if d.tokenizer == "train":
        if jax.process_index() == 0:
            log.info("training a %s SentencePiece tokenizer (vocab %d) on %s", d.tokenizer_model_type,
                     d.vocab_size, d.dataset)
            tokenizer = train_tokenizer_from_dataset(
                d.dataset, vocab_size=d.vocab_size, model_type=d.tokenizer_model_type, out_dir=own,
                max_sentences=d.tokenizer_max_sentences, data_dir=d.data_dir or None, path=d.path or None,
                text_field=d.text_fields[0], split=d.train_split, seed=config.train.seed)
        distributed.sync("tokenizer")
        return load_tokenizer(own)
    tokenizer = load_tokenizer(tokenizer_source(config))
    if jax.process_index() == 0:
        tokenizer.save(own)
    return tokenizer


def tokenizer_source(config) -> str:
    """The directory of a tokenizer that is not trained: config.data.tokenizer, or model.init_from's ('init')."""
    if config.data.tokenizer != "init":
        return config.data.tokenizer
    kind, _, where = config.model.init_from.partition(":")
    return where if kind == "hf" else str(pathlib.Path(where) / "tokenizer")


def model_config_from(config, vocab_size: int) -> tuple[TransformerConfig, dict | None]:
    """(model config, pretrained params or None) from config.model and its init_from.

    The pretrained params are the encoder ('bert') and, when pretraining goes on from a checkpoint (BERT's
    phase 2), the MLM and NSP heads it holds; fine-tuning gets a fresh classifier head."""
    m = config.model
    overrides = dict(
        hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout, remat=m.remat,
        scan_layers=m.scan_layers, attention=m.attention, dtype=DTYPES[config.train.dtype],
    )
    kind, _, where = (m.init_from or "none").partition(":")
    if kind == "hf":
        model_config, params = hf.from_pretrained(where, "pretrain", **overrides)
        encoder = params["bert"]
    elif kind == "jaxlm":
        meta, params = checkpoint.restore_params(where)
        saved = meta["identity"]["model"]
        model_config = TransformerConfig(**{**saved, "param_dtype": jnp.float32, **overrides})
        encoder = jax.tree.map(np.asarray, params["bert"])
        has_layers = "layers" in encoder["encoder"]
        if has_layers and not model_config.scan_layers:
            encoder["encoder"] = unstack_layers(encoder["encoder"], model_config.num_layers)
        elif not has_layers and model_config.scan_layers:
            encoder["encoder"] = stack_layers(encoder["encoder"], model_config.num_layers)
    elif kind == "none":
        model_config = bert.preset(m.preset, vocab_size=vocab_size, max_position_embeddings=m.max_position_embeddings,
                                   **{**m.overrides.to_dict(), **overrides})
        encoder = None
    else:
        raise ValueError(f"config.model.init_from={m.init_from!r}: expected 'none', 'hf:DIR' or 'jaxlm:WORKDIR'")
    if model_config.vocab_size != vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} tokens but the model ({m.init_from}) has "
                         f"vocab_size={model_config.vocab_size}; use the checkpoint's own tokenizer "
                         "(config.data.tokenizer='init')")
    if config.data.max_seq_length > model_config.max_position_embeddings:
        raise ValueError(f"config.data.max_seq_length={config.data.max_seq_length} exceeds the model's "
                         f"max_position_embeddings={model_config.max_position_embeddings}")
    if encoder is None:
        return model_config, None
    heads = ("mlm_head", "nsp_head") if config.task.name == "pretrain" else ()
    return model_config, {"bert": encoder, **{h: jax.tree.map(np.asarray, params[h]) for h in heads if h in params}}


# Model fields that may change between the runs of one experiment (a resume on another setup).
VOLATILE_MODEL_FIELDS = ("remat", "scan_layers", "attention", "dtype", "hidden_dropout", "attention_dropout")


def _identity(config, model_config: TransformerConfig, num_labels: int | None) -> dict:
    """What makes a checkpoint this experiment's: a workdir holding another one's is refused."""
    model = {k: v for k, v in _model_dict(model_config).items() if k not in VOLATILE_MODEL_FIELDS}
    model["dtype"] = config.train.dtype  # bitwise resume is promised for the same compute dtype
    return {"task": config.task.name, "dataset": config.data.dataset, "num_labels": num_labels, "model": model}


def _load_pretrained(state, pretrained: dict, shardings):
    """A fresh state with the pretrained parts ('bert', and heads when pretraining goes on) put in."""
    params = dict(state.params)
    for name, tree in pretrained.items():
        expected = jax.tree.map(lambda x: (x.shape, x.dtype), params[name])
        got = jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), tree)
        if jax.tree.structure(expected) != jax.tree.structure(got) or expected != got:
            raise ValueError(f"the pretrained {name!r} parameters do not match the model's shapes")
        params[name] = jax.device_put(tree, shardings.params[name])
    return state.replace(params=params)


@dataclasses.dataclass
class Run:
    """What train, evaluate and predict share: the mesh, the tokenizer, the model and its steps."""

    config: Any
    mesh: Any
    tokenizer: Any
    task: Any
    model_config: TransformerConfig
    model: Any
    num_labels: int | None
    label_names: list[str] | None
    pretrained: dict | None  # params from model.init_from, put into the state when training starts

    @classmethod
    def create(cls, config, workdir: pathlib.Path, trained: bool = False) -> "Run":
        """For training; or, with `trained`, for a trained workdir (its saved model config and labels)."""
        m = config.mesh
        sizes = (m.data, m.fsdp, m.tensor)
        devices = jax.devices()[: int(np.prod(sizes))] if min(sizes) > 0 else None  # fewer devices than all
        mesh = sharding.make_mesh(*sizes, devices=devices)
        # Before anything is written or compiled.
        sharding.check_batch_size("batch_size", config.data.batch_size, mesh, config.optim.accumulate)
        sharding.check_batch_size("eval_batch_size", config.data.eval_batch_size, mesh)
        if config.task.name not in TASKS:
            raise ValueError(f"config.task.name={config.task.name!r}: expected one of {sorted(TASKS)}")
        if config.model.get("attention") == "splash":  # (traced per bucket length, maybe only at the first eval)
            check_splash_length(config.data.max_seq_length, "config.data.max_seq_length")
            for length in config.data.buckets:
                check_splash_length(length, f"config.data.buckets={tuple(config.data.buckets)}")
        task = TASKS[config.task.name]
        tokenizer = resolve_tokenizer(config, workdir)
        if trained:
            saved = json.loads((workdir / "model.json").read_text())
            # attention 'auto': the path of the platform evaluating (a run trained with 'splash' on TPU is
            # evaluated with 'fused' on a CPU, not with the kernel in interpret mode); the same numbers.
            model_config, pretrained = TransformerConfig(**{**saved, "dtype": DTYPES[saved["dtype"]],
                                                         "param_dtype": DTYPES[saved["param_dtype"]],
                                                         "attention": "auto"}), None
            labels = workdir / "labels.json"
            names = json.loads(labels.read_text()) if labels.exists() else None
        else:
            names = task.label_names(config) if config.task.name == "classify" else None
            model_config, pretrained = model_config_from(config, tokenizer.vocab_size)
        num_labels = len(names) if names else None
        model = bert.for_task(model_config, "classify" if names else "pretrain", num_labels)
        return cls(config, mesh, tokenizer, task, model_config, model, num_labels, names, pretrained)

    def eval_fn(self, param_shardings):
        return jax.jit(functools.partial(eval_step, model=self.model, loss=self.task.loss),
                       in_shardings=(param_shardings, sharding.batch_sharding(self.mesh)))

    def evaluate(self, eval_fn, params, examples, batch_size: int) -> dict[str, float]:
        """One pass over every example exactly once (the last batch padded with weight 0)."""
        index, count = sharding.host_data_shard(self.mesh)
        totals = None
        with sharding.mesh_context(self.mesh):
            for batch in pipeline.eval_batches(examples, batch_size, process_index=index, process_count=count):
                sums = eval_fn(params, sharding.global_batch(batch, self.mesh))
                faults.hit("eval")
                totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        return self.task.summarize(jax.device_get(totals))


# ------------------------------------------------------------------------------------------- training


class _Preemption:
    """SIGTERM (how a TPU VM is preempted) sets a flag; the loop finishes its step, saves and exits.

    With several processes, jax.distributed's preemption service catches SIGTERM instead (a Python handler
    would replace its own): the process that got it tells the others, and all reach the same step to save at.
    """

    def __init__(self):
        self.requested = False
        self._multihost = jax.process_count() > 1
        self._previous = None if self._multihost else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def reached(self, step: int) -> bool:
        if self._multihost:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self):
        if not self._multihost:
            signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
    """Train per `config` in `workdir`, resuming from its latest checkpoint. Returns the final metrics."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"--workdir {workdir}: exists and is not a directory")
    run = Run.create(config, workdir)
    d, t, o = config.data, config.train, config.optim
    # Before anything expensive: a workdir that cannot be written or holds another experiment fails now.
    ckpts = checkpoint.Checkpoints(workdir, keep=t.keep, identity=_identity(config, run.model_config, run.num_labels),
                                   layout={"scan_layers": run.model_config.scan_layers},
                                   best_metric=t.best_metric or None, best_mode=t.best_mode)
    train_examples = run.task.examples(config, run.tokenizer, d.train_split)
    eval_examples = run.task.examples(config, run.tokenizer, d.eval_split) if d.eval_split else None
    # Read now, not after training: a test split that cannot be used (no labels, say) fails before the run.
    test_examples = run.task.examples(config, run.tokenizer, d.test_split) if d.test_split else None
    truncated = getattr(train_examples, "num_truncated", 0)
    if truncated:
        log.info("%d of %d training texts were truncated to data.max_seq_length=%d", truncated,
                 len(train_examples), d.max_seq_length)
    platform = run.mesh.devices.flat[0].platform
    log.info("attention at length %d on %s: %s in training, %s in evaluation", d.max_seq_length, platform,
             *(attention_path(run.model_config, training=tr, length=d.max_seq_length, platform=platform)
               for tr in (True, False)))
    steps_per_epoch = -(-len(train_examples) // d.batch_size)
    num_steps = t.num_steps or t.num_epochs * steps_per_epoch
    tx, schedule = optim.make_optimizer(ml_collections.ConfigDict({**o.to_dict(), "num_steps": num_steps}))

    mesh = run.mesh
    init = functools.partial(train_state.create, run.model, tx, max_seq_length=d.max_seq_length)
    with sharding.mesh_context(mesh):
        state, shardings = sharding.init_sharded(init, mesh, jax.random.key(t.seed))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    restored = ckpts.restore(abstract)
    data_state = {"step": 0}
    if restored is not None:
        start, state, data_state, _ = restored
        log.info("resumed from %s at step %d", workdir / "checkpoints" / str(start), start)
    elif run.pretrained is not None:
        state = _load_pretrained(state, run.pretrained, shardings)
    start = int(state.step)
    if jax.process_index() == 0:
        _save_run_files(workdir, config, run)

    index, count = sharding.host_data_shard(mesh)
    batches = pipeline.Batches(train_examples, d.batch_size, seed=t.seed, shuffle=True,
                               process_index=index, process_count=count, prefetch=2)
    batches.set_state(data_state)
    step_fn = jit_train_step(run.model, run.task.loss, tx, mesh, shardings, o.accumulate)
    eval_fn = run.eval_fn(shardings.params)
    # Model FLOPs of an example at a batch's length (buckets make fine-tuning batches shorter than the maximum).
    flops_per_example = functools.cache(functools.partial(
        monitor.train_flops_per_example, run.model_config, predictions=run.task.predictions_per_example(config)))
    peak = monitor.peak_flops_per_device() * jax.device_count()
    mon = monitor.Monitor(workdir, total_steps=num_steps, start_step=start, config=config,
                          enabled=jax.process_index() == 0)
    preemption = _Preemption()
    rng = jax.random.key(t.seed + 1)
    sums, window_start, window_steps, window_flops = None, time.perf_counter(), 0, 0.0
    results = workdir / "results.json"
    finished = start >= num_steps and results.exists()  # run again after the end: its results stay as they were
    final: dict[str, Any] = json.loads(results.read_text()) if finished else {"step": start}
    step = start
    try:
        with sharding.mesh_context(mesh):
            stop_at = min(num_steps, start + t.stop_after) if t.stop_after else num_steps
            while step < stop_at:
                if t.profile_steps and step == t.profile_start:
                    jax.profiler.start_trace(str(workdir / "profile"))
                batch = sharding.global_batch(faults.poison(next(batches), step + 1), mesh)
                state, metrics = step_fn(state, batch, rng)
                step += 1
                faults.hit("step", step)
                if t.profile_steps and step == t.profile_start + t.profile_steps:
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                    mon.message(f"profiler trace of steps {t.profile_start}-{step} in {workdir / 'profile'}")
                window_steps += 1
                window_flops += flops_per_example(batch["input_ids"].shape[1]) * d.batch_size
                sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
                last = step == num_steps
                if step % t.log_every == 0 or last:
                    host = jax.device_get(sums)
                    elapsed = time.perf_counter() - window_start
                    summary = run.task.summarize(host)
                    summary.update(
                        learning_rate=float(schedule(step - 1)), grad_norm=float(host["grad_norm"]) / window_steps,
                        tokens_per_s=float(host["tokens"]) / elapsed, steps_per_s=window_steps / elapsed,
                        step_time_s=elapsed / window_steps, skipped_updates=int(state.skipped),
                        tokens=float(host["tokens"]),
                        mfu=window_flops / elapsed / peak,
                    )
                    mon.write(step, "train", summary)
                    final["train"] = summary
                    if host["nonfinite"] and t.on_nonfinite == "stop":
                        mon.message(f"non-finite loss or gradient at step {step}: stopping; the state holds the "
                                    "last good update and is saved")
                        ckpts.save(step, state, batches.get_state(), metrics=summary)
                        final["stopped"] = "nonfinite"
                        break
                    sums, window_start, window_steps, window_flops = None, time.perf_counter(), 0, 0.0
                mon.advance(step)
                evaluated = None
                if eval_examples is not None and (step % t.eval_every == 0 or last):
                    eval_start = time.perf_counter()
                    evaluated = run.evaluate(eval_fn, state.params, eval_examples, d.eval_batch_size)
                    window_start += time.perf_counter() - eval_start  # throughput counts training only
                    mon.write(step, "eval", evaluated)
                    final["eval"] = evaluated
                    ckpts.save_if_best(step, state, batches.get_state(), evaluated)
                if step % t.checkpoint_every == 0 or last or step == stop_at:
                    ckpts.save(step, state, batches.get_state(), metrics=evaluated)
                if preemption.reached(step):
                    if step % t.checkpoint_every and not last:
                        ckpts.save(step, state, batches.get_state(), metrics=evaluated)
                    final["stopped"] = "preempted"
                    mon.message(f"preempted (SIGTERM) at step {step}: checkpoint saved in {workdir}; "
                                "run the same command again to resume")
                    break
    finally:
        try:
            ckpts.wait()  # a save that failed raises here (StorageError), after the clean-up below
        finally:
            ckpts.close()
            batches.close()
            preemption.close()
            mon.close()
    final["step"] = step
    if test_examples is not None and step == num_steps:  # the final parameters on the test split, and the baseline
        final["test"] = {**run.evaluate(eval_fn, state.params, test_examples, d.eval_batch_size),
                         **run.task.baseline(train_examples, test_examples)}
    if jax.process_index() == 0:
        results.write_text(json.dumps(final, indent=2) + "\n")
    final["params"] = state.params
    return final


# ------------------------------------------------------------------------------------------- after training


def _trained(workdir: str | pathlib.Path):
    """(run, params) of a trained workdir: its config, tokenizer, and best (else latest) parameters."""
    workdir = pathlib.Path(workdir)
    config = load_workdir_config(workdir)
    run = Run.create(config, workdir, trained=True)
    init = functools.partial(train_state.create, run.model, optax.identity(), max_seq_length=8)
    with sharding.mesh_context(run.mesh):
        abstract = sharding.abstract_state(init, run.mesh, jax.random.key(0))
    meta, params = checkpoint.restore_params(workdir, abstract.params)
    return run, params


def evaluate_workdir(workdir: str | pathlib.Path, split: str) -> dict[str, float]:
    run, params = _trained(workdir)
    examples = run.task.examples(run.config, run.tokenizer, split)
    eval_fn = run.eval_fn(jax.tree.map(lambda x: x.sharding, params))
    return run.evaluate(eval_fn, params, examples, run.config.data.eval_batch_size)


def predict(workdir: str | pathlib.Path, texts: list[str], top: int = 1) -> list[list[tuple[str, float]]]:
    """For each text (a 'text_a\\ttext_b' pair when the task has two text fields), its `top` most probable
    (label, probability), most probable first; [('value', v)] for a regression.

    The texts go through the jitted model in batches of config.data.eval_batch_size (or fewer texts, rounded up to
    the mesh's batch unit) on the workdir's mesh, the last one padded, with a progress bar when there are several."""
    if top < 1:
        raise ValueError(f"--top {top}: expected a number of labels >= 1")
    if jax.process_count() > 1:
        raise ValueError("predict runs in one process (it was started as one of several)")
    if not texts:
        return []
    run, params = _trained(workdir)
    if run.label_names is None:
        raise ValueError(f"{workdir}: predict needs a fine-tuned classifier (task 'classify')")
    from tqdm import tqdm

    from jaxlm.data.classification import ClassificationExamples, tokenize_examples
    from jaxlm.data.inputs import SpecialIds

    d = run.config.data
    fields = list(d.text_fields)
    rows = [dict(zip(fields, t.split("\t", 1) if len(fields) == 2 else [t])) for t in texts]
    for r in rows:
        r.setdefault(fields[-1], "")
    arrays = tokenize_examples(rows, run.tokenizer, fields, None, d.max_seq_length, False)
    examples = ClassificationExamples(arrays, d.max_seq_length, (), SpecialIds.of(run.tokenizer))
    logits_fn = jax.jit(lambda p, b: run.model.apply({"params": p}, b)["logits"],
                        in_shardings=(jax.tree.map(lambda x: x.sharding, params), sharding.batch_sharding(run.mesh)))
    unit = sharding.batch_unit(run.mesh)
    size = min(d.eval_batch_size, -(-len(texts) // unit) * unit)  # one text: a batch of `unit` rows, not 256
    batches = -(-len(texts) // size)
    logits = []
    with sharding.mesh_context(run.mesh):
        for batch in tqdm(pipeline.eval_batches(examples, size), total=batches, desc="predict", unit="batch",
                          disable=batches < 2):  # in order; the last batch padded with weight-0 rows
            real = batch["example_weight"] > 0
            logits.append(np.asarray(logits_fn(params, sharding.global_batch(batch, run.mesh)))[real])
    logits = np.concatenate(logits)
    if run.num_labels == 1:
        return [[("value", float(v))] for v in logits[:, 0]]
    probs = np.asarray(jax.nn.softmax(logits, -1))
    return [[(run.label_names[i], float(p[i])) for i in np.argsort(-p, kind="stable")[:top]] for p in probs]
