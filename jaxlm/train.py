"""The one trainer: the loop of a task's jitted step over a step-indexed input pipeline, with its periodic actions.

    train_and_evaluate(config, workdir)   train per `config` in `workdir`, resuming from its latest checkpoint

What a config means (task, model, mesh, state) is `jaxlm.experiment`'s; the step is the task's (by default
`jaxlm.steps`: a pure (state, batch, rng) -> (state, metric sums), its randomness fold_in(rng, step)). The data
position is saved with the state: a resumed run is bitwise the run that was never interrupted (same mesh and
software).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from jaxlm import checkpoint, faults, metric_sums, monitor, sharding, storage
from jaxlm import workdir as jaxlm_workdir
from jaxlm.data import pipeline
from jaxlm.experiment import Experiment, resolve_tokenizer
from jaxlm.models.transformer import attention_path

log = logging.getLogger(__name__)


class _Stop:
    """SIGTERM (how a TPU VM is preempted) and Ctrl-C (SIGINT) ask the loop to finish its step, save and exit.
    A second Ctrl-C exits at once: a save in flight is left unfinished (never read), and a relaunch resumes from
    the newest complete checkpoint.

    With several processes, jax.distributed's preemption service catches SIGTERM instead (a Python handler
    would replace its own): the process that got it tells the others, and all reach the same step to save at.
    Ctrl-C keeps Python's default there (a KeyboardInterrupt, no save: one host alone must not stop).
    """

    def __init__(self, workdir: epath.Path):
        self.requested: str | None = None  # 'preempted' or 'interrupted'
        self._workdir = workdir
        self._multihost = jax.process_count() > 1
        signals = () if self._multihost else (signal.SIGTERM, signal.SIGINT)
        self._previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested == "interrupted":
            os.write(2, f"\njaxlm: Ctrl-C again: stopped at once; the same command resumes from the newest complete "
                        f"checkpoint in {self._workdir / 'checkpoints'}\n".encode())
            os._exit(130)
        if signum == signal.SIGINT:
            os.write(2, b"\njaxlm: Ctrl-C: finishing the step and saving (Ctrl-C again to stop at once)\n")
        self.requested = self.requested or ("interrupted" if signum == signal.SIGINT else "preempted")

    def reached(self, step: int) -> str | None:
        """Why the run stops after `step` ('preempted', 'interrupted'), or None."""
        if self._multihost:
            from jax.experimental import multihost_utils

            return "preempted" if multihost_utils.reached_preemption_sync_point(step) else None
        return self.requested

    def close(self):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


class _Window:
    """Metric sums and throughput since the last log line (time spent evaluating is not counted)."""

    def __init__(self, peak_flops: float):
        self.peak = peak_flops
        self._reset()

    def _reset(self) -> None:
        self.sums, self.steps, self.flops, self.start = None, 0, 0.0, time.perf_counter()

    def add(self, metrics: dict, flops: float) -> None:
        self.sums = metrics if self.sums is None else metric_sums.merge(self.sums, metrics)
        self.steps, self.flops = self.steps + 1, self.flops + flops

    def exclude(self, seconds: float) -> None:
        self.start += seconds

    def close(self, summarize, extra: dict) -> tuple[dict, bool]:
        """(the window's summary, whether a step in it was not finite); a new window starts."""
        host = jax.device_get(self.sums)
        elapsed = time.perf_counter() - self.start
        summary = summarize(host)
        summary.update(grad_norm=float(host["grad_norm"]) / self.steps, tokens_per_s=float(host["tokens"]) / elapsed,
                       steps_per_s=self.steps / elapsed, step_time_s=elapsed / self.steps,
                       tokens=float(host["tokens"]), mfu=self.flops / elapsed / self.peak, **extra)
        self._reset()
        return summary, bool(host["nonfinite"])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train per `config` in `workdir`, resuming from its latest checkpoint. Returns the results (results.json):
    step, the last train and eval metrics, test metrics and the baseline at the end, and `stopped` if it stopped
    early ('preempted', 'interrupted', 'nonfinite'). The run holds the workdir: another run on it stops at once."""
    workdir = storage.path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"--workdir {workdir}: exists and is not a directory")
    with jaxlm_workdir.hold(workdir):
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict[str, Any]:
    changes = jaxlm_workdir.check_resume(config, workdir)  # another experiment, or other settings: refused now
    d, t = config.data, config.train
    tokenizer = resolve_tokenizer(config, workdir)
    exp = Experiment.from_config(config, tokenizer.vocab_size)
    # Before anything expensive: a workdir that cannot be written or holds another experiment fails now.
    ckpts = checkpoint.Checkpoints(workdir, keep=t.keep, identity=exp.identity(), layout=exp.layout(),
                                   best_metric=t.best_metric or None, best_mode=t.best_mode)
    train_examples = exp.task.examples(tokenizer, d.train_split)
    eval_examples = exp.task.examples(tokenizer, d.eval_split) if d.eval_split else None
    # Read now, not after training: a test split that cannot be used (no labels, say) fails before the run.
    test_examples = exp.task.examples(tokenizer, d.test_split) if d.test_split else None
    if getattr(train_examples, "num_truncated", 0):
        log.info("%d of %d training texts were truncated to data.max_seq_length=%d", train_examples.num_truncated,
                 len(train_examples), d.max_seq_length)
    platform = exp.mesh.devices.flat[0].platform
    log.info("attention at length %d on %s: %s in training, %s in evaluation", d.max_seq_length, platform,
             *(attention_path(exp.model_config, training=tr, length=d.max_seq_length, platform=platform)
               for tr in (True, False)))
    num_steps = t.num_steps or t.num_epochs * -(-len(train_examples) // d.batch_size)
    results = workdir / "results.json"
    if results.exists() and (ckpts.latest_step() or 0) >= num_steps:  # run again after the end: nothing to do
        log.info("%s finished at step %d (%s); nothing to train or write (a longer run: --config.train.num_steps)",
                 workdir, ckpts.latest_step(), results)
        ckpts.close()
        return json.loads(results.read_text())
    tx, schedule = exp.optimizer(num_steps)
    learning_rate = jax.jit(schedule)  # for the log: one small program, not a dozen eager ops per log line

    state, shardings = exp.init_state(tx)
    data_state = {"step": 0}
    restored = ckpts.restore(jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                          state, shardings))
    if restored is not None:
        _, state, data_state, _ = restored
        log.info("resumed from %s at step %d", workdir / "checkpoints" / str(int(state.step)), int(state.step))
    start = int(state.step)
    stop_at = min(num_steps, start + t.stop_after) if t.stop_after else num_steps
    if restored is None:  # what the workdir's checkpoints are: written once, when the first of them is trained
        if jax.process_index() == 0:
            exp.save_files(workdir)
        run_id = jaxlm_workdir.record_start(workdir, config)
    else:
        run_id = jaxlm_workdir.record_resume(workdir, config, start, changes)
    final: dict[str, Any] = {"step": start}

    index, count = sharding.host_data_shard(exp.mesh)
    batches = pipeline.Batches(train_examples, d.batch_size, seed=t.seed, shuffle=True,
                               process_index=index, process_count=count, prefetch=2)
    batches.set_state(data_state)
    step_fn = exp.task.train_step(exp.model, tx, exp.mesh, shardings, config.optim.accumulate)
    eval_fn = exp.eval_fn(shardings.params)
    window = _Window(monitor.peak_flops_per_device() * jax.device_count())
    # Model FLOPs of a batch at its length (buckets make fine-tuning batches shorter than the maximum).
    batch_flops = functools.cache(lambda length: exp.task.flops_per_example(exp.model_config, length) * d.batch_size)
    mon = monitor.Monitor(workdir, total_steps=num_steps, start_step=start, enabled=jax.process_index() == 0,
                          wandb=monitor.WandbRun.start(t.wandb_project, workdir, run_id, config))
    stopping = _Stop(workdir)
    rng = jax.random.key(t.seed + 1)
    due = lambda step, every: step % every == 0 or step == num_steps  # noqa: E731
    step = start
    try:
        with sharding.mesh_context(exp.mesh):
            while step < stop_at:
                if t.profile_steps and step == t.profile_start:
                    jax.profiler.start_trace(str(workdir / "profile"))
                batch = sharding.global_batch(faults.poison(next(batches), step + 1), exp.mesh)
                state, metrics = step_fn(state, batch, rng)
                step += 1
                faults.hit("step", step)
                if t.profile_steps and step == t.profile_start + t.profile_steps:
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                    mon.message(f"profiler trace of steps {t.profile_start}-{step} in {workdir / 'profile'}")
                window.add(metrics, batch_flops(batch["input_ids"].shape[-1]))  # (batch, [2,] length)
                stop, evaluated = None, None
                if due(step, t.log_every):
                    final["train"], nonfinite = window.close(exp.task.summarize, {
                        "learning_rate": float(learning_rate(step - 1)), "skipped_updates": int(state.skipped)})
                    mon.write(step, "train", final["train"])
                    mon.samples(step, exp.task.samples())
                    if nonfinite and t.on_nonfinite == "stop":
                        stop = "nonfinite"
                        mon.message(f"non-finite loss or gradient at step {step}: stopping; the state holds the "
                                    "last good update and is saved")
                mon.advance(step)
                if eval_examples is not None and due(step, t.eval_every) and not stop:
                    began = time.perf_counter()
                    evaluated = final["eval"] = exp.evaluate(eval_fn, state.params, eval_examples, d.eval_batch_size)
                    window.exclude(time.perf_counter() - began)  # throughput counts training only
                    mon.write(step, "eval", evaluated)
                    ckpts.save_if_best(step, state, batches.get_state(), evaluated)
                if not stop and (stop := stopping.reached(step)):
                    why = "preempted (SIGTERM)" if stop == "preempted" else "interrupted (Ctrl-C)"
                    mon.message(f"{why} at step {step}: checkpoint saved in {workdir}; run the same command "
                                "again to resume")
                if stop or due(step, t.checkpoint_every) or step == stop_at:  # the one save
                    ckpts.save(step, state, batches.get_state(), metrics=evaluated)
                if stop:
                    final["stopped"] = stop
                    break
    finally:
        try:
            ckpts.wait()  # a save that failed raises here (StorageError), after the clean-up below
        finally:
            ckpts.close()
            batches.close()
            stopping.close()
            mon.close()
    final["step"] = step
    if eval_examples is not None and final.get("eval") and step == num_steps:  # a trivial predictor beside it
        final["eval"].update(exp.task.baseline(train_examples, eval_examples))
    if test_examples is not None and step == num_steps:  # the final parameters on the test split, and the baseline
        final["test"] = {**exp.evaluate(eval_fn, state.params, test_examples, d.eval_batch_size),
                         **exp.task.baseline(train_examples, test_examples)}
    if step == num_steps:  # what the task keeps beside the model (a reward's normalisation)
        files = exp.task.model_files(lambda ex: exp.evaluate(eval_fn, state.params, ex, d.eval_batch_size),
                                     train_examples)
        for name, content in files.items() if jax.process_index() == 0 else ():
            (workdir / name).write_text(json.dumps(content, indent=2) + "\n")
    if jax.process_index() == 0:
        results.write_text(json.dumps(final, indent=2) + "\n")
    mon.finish(final)
    return final

