"""Tasks: what a run optimises and measures, behind one contract (`jaxlm.tasks.task.Task`).

The one trainer takes a task; each task owns its model family and head, its loss (sums and denominators, so
micro-batches and hosts add up exactly), its metrics, its data and what its predictions are. Adding a task is
adding a file here with a `Task` subclass, its name in `TASKS`, and the config fields it reads in
`jaxlm.config.base()`; nothing outside this package branches on a task's name.
"""

from __future__ import annotations

from jaxlm.tasks.causal_lm import SFT, CausalLM
from jaxlm.tasks.classify import Classify
from jaxlm.tasks.dpo import DPO
from jaxlm.tasks.pretrain import Pretrain
from jaxlm.tasks.reward import Reward
from jaxlm.tasks.rloo import RLOO
from jaxlm.tasks.task import Task

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Pretrain, Classify, Reward, CausalLM, SFT, DPO, RLOO)}


def create(config) -> Task:
    """The task config.task.name names, bound to `config`."""
    name = config.task.name
    if name not in TASKS:
        raise ValueError(f"config.task.name={name!r}: expected one of {sorted(TASKS)}")
    return TASKS[name](config)


__all__ = ["TASKS", "Task", "create"]
