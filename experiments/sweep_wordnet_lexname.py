"""A sweep: learning rate x batch size x 3 seeds for fine-tuning bert-mini on wordnet_lexname (45 classes).

Command (after the demo's pretraining, `bash scripts/main.sh` or its first step, which the trials start from):

    jaxlm sweep --config experiments/sweep_wordnet_lexname.py --workdir workdirs/sweep_lexname --parallel 2

18 trials of 300 steps (batch 16 or 32), each a `jaxlm finetune` of the demo's `finetune` variant; the
`scratch` variant (`--config experiments/sweep_wordnet_lexname.py` with get_sweep's variant changed, or
`--config.model.init_from=none`) sweeps the same from random initialisation. Trials are compared on the
validation accuracy (the test split is reported beside it, never used to choose). Interrupt it (Ctrl-C) and
run the same command again: finished trials are kept, the others resume from their checkpoints.

Hardware: any CPU. On 2 CPU cores a trial is 300 steps of bert-mini at length 64 (the demo's fine-tuning ran
400 steps of batch 32 in a few minutes) plus ~20 s of start-up, so the 18 trials take the better part of an
hour; two at a time share the cores (no faster in total, but one crashed trial never stops the rest).
Expected: not yet measured at this size (tests/test_sweep.py runs a 4-trial miniature of the same machinery);
pretraining should hold its advantage over the `scratch` variant at every setting, well above the majority
class (about 10%), with seeds a few points apart.
Results: workdirs/sweep_lexname/{results.csv, summary.csv, sweep.png}.
"""

import pathlib

from jaxlm import config as jaxlm_config

DEMO = pathlib.Path(__file__).with_name("demo_cpu.py")


def get_config(variant: str = "finetune"):
    if variant not in ("finetune", "scratch"):
        raise KeyError(f"variant {variant!r}; expected finetune or scratch")
    c = jaxlm_config.load(f"{DEMO}:{variant}")
    c.train.num_steps = 300
    c.optim.warmup_steps = 30
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.best_metric = ""  # each trial's result is its final state, evaluated on validation and test
    c.data.test_split = "test"
    return c


def get_sweep():
    return {
        "variant": "finetune",
        "grid": {"optim.learning_rate": [1e-4, 3e-4, 1e-3], "data.batch_size": [16, 32]},
        "random": {},
        "num_random": 0,
        "random_seed": 0,
        "seeds": [0, 1, 2],
        "metric": "eval.accuracy",
        "mode": "max",
    }
