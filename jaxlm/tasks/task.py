"""The contract between the one trainer and a task.

A task is bound to the run's config when it is made (`jaxlm.tasks.create(config)`) and answers:

    model(model_config, label_names)   the Flax module it trains: the model family and its head
    pretrained_parts                   which top-level parameters of model.init_from it takes (the rest start fresh)
    label_names(read_data)             the names of its outputs (classes), from the data; None if it has none
    examples(tokenizer, split)         the examples of a split: len(), batch(indices, epoch, length) -> arrays
    batch_spec(batch_size)             {key: (shape, dtype)} of a batch, without reading data (to compile ahead)
    loss(outputs, batch)               (loss sums, denominators, metric sums) of one batch: pure, traced under jit
    summarize(sums)                    metric sums over steps, devices and hosts -> named metrics
    baseline(train, test)              a trivial predictor's metrics on `test`, to print beside the model's
    flops_per_example(model_config, L) model FLOPs of one training example at length L (for MFU)
    predict(outputs)                   what prediction returns per example, from the model's outputs
    train_step(model, tx, mesh, shardings, accumulate)
                                       the step (state, batch, rng) -> (state, metric sums): by default jitted
    eval_step(model, param_shardings, mesh)
                                       the evaluation (params, batch) -> metric sums: by default the jitted loss
    samples()                          texts the task made since it was last asked (a rollout's), as records for
                                       the trainer to write at each log line (samples.jsonl, TensorBoard)
    model_files(evaluate, train)       {file name: JSON} saved beside the model when training ends, made with
                                       evaluate(examples) -> the task's metrics (a reward's normalisation)

Metric sums are `jaxlm.metric_sums`': sums over examples, or extremes named min_* / max_*.

What the tasks to come take from it, without a change to the trainer: a task of another model family (a decoder)
builds it in `model`; a task whose batches hold prompts only says so in `examples` and `batch_spec`; a task with
frozen auxiliary parameters (a reference or a reward model) loads them when its step is made and binds them into
its own `train_step`; on-policy RL (`jaxlm.tasks.rloo`) makes its step a host function of jitted parts, generating,
scoring and updating, and its evaluation one that generates and scores. The default steps are `jaxlm.steps`'.
"""

from __future__ import annotations

import functools
import os
from typing import Any, ClassVar

import jax

from jaxlm import monitor, sharding, steps


class Task:
    """Base of every task: the defaults of the contract above; `name`, `model`, `examples`, `batch_spec`, `loss`
    and `summarize` have none."""

    name: ClassVar[str]
    command: ClassVar[str] = "finetune"  # the `jaxlm` command that trains it (`jaxlm train` trains any task)
    pretrained_parts: ClassVar[tuple[str, ...]] = ("bert",)

    def __init__(self, config):
        self.config = config

    def model(self, model_config, label_names: list[str] | None):
        raise NotImplementedError

    def label_names(self, read_data: bool = True) -> list[str] | None:
        return None

    def source(self, split: str, **builder_kwargs):
        """Split `split` of config.data.dataset, from its data_dir and path."""
        from jaxlm.data import sources

        d = self.config.data
        return sources.open_source(d.dataset, split, data_dir=d.data_dir or None, path=d.path or None,
                                   **builder_kwargs)

    def cache(self, split: str) -> dict[str, str]:
        """Where, and under which name, the tokenised examples of `split` are cached."""
        from jaxlm.data import sources

        d = self.config.data
        return {"cache_dir": str(sources.default_data_dir().parent / "examples"),
                "name": f"{d.dataset}:{d.path}:{split}"}

    def workers(self) -> int:
        """How many processes tokenise a corpus on this host: config.data.workers, 0 = all its cores."""
        workers = self.config.data.workers
        if workers < 0:
            raise ValueError(f"config.data.workers={workers}: expected a number of processes, or 0 for all cores")
        return workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def examples(self, tokenizer, split: str):
        raise NotImplementedError

    def batch_spec(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
        raise NotImplementedError

    def loss(self, outputs: dict, batch: dict) -> tuple[dict, dict, dict]:
        raise NotImplementedError

    def summarize(self, sums: dict) -> dict[str, float]:
        raise NotImplementedError

    def baseline(self, train_examples, examples) -> dict[str, float]:
        return {}

    def predictions_per_example(self) -> int | None:
        """Positions the output head projects per example (None: every position)."""
        return None

    def flops_per_example(self, model_config, length: int) -> float:
        return monitor.train_flops_per_example(model_config, length, self.predictions_per_example())

    def predict(self, outputs: dict) -> Any:
        raise ValueError(f"task {self.name!r} makes no predictions (predict needs a fine-tuned classifier)")

    def train_step(self, model, tx, mesh, shardings, accumulate: int):
        return steps.jit_train_step(model, self.loss, tx, mesh, shardings, accumulate)

    def eval_step(self, model, param_shardings, mesh):
        return jax.jit(functools.partial(steps.eval_step, model=model, loss=self.loss),
                       in_shardings=(param_shardings, sharding.batch_sharding(mesh)))

    def samples(self) -> list[dict]:
        return []

    def model_files(self, evaluate, train_examples) -> dict[str, dict]:
        return {}

