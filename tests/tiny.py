"""Tiny runs of the demo config for the trainer tests: a 2-layer, 128-wide BERT on 32-token sequences, using the
`data_env` fixture's data dir and 512-piece tokenizer (tests/conftest.py)."""

import pathlib

from jaxlm import config as jaxlm_config

DEMO = str(pathlib.Path(__file__).parents[1] / "experiments" / "demo_cpu.py")


def tiny(variant: str, data_env, **fields):
    c = jaxlm_config.load(f"{DEMO}:{variant}")
    overrides = {
        "model.preset": "bert-L2-H128", "data.max_seq_length": 32, "data.batch_size": 16,
        "data.eval_batch_size": 32, "data.tokenizer": str(data_env / "tok"),
        "data.eval_split": "validation[:48]", "task.max_predictions_per_seq": 5, "optim.warmup_steps": 2,
        "train.log_every": 5, "train.eval_every": 10, "train.checkpoint_every": 10, "mesh.data": -1,
        # MLM + NSP with dropout, as google-research/bert (the demo's pretraining is packed MLM without dropout)
        "task.packed": False, "model.hidden_dropout": 0.1, "model.attention_dropout": 0.1,
    }
    if variant != "pretrain":
        overrides.update({"data.buckets": (16,), "data.test_split": "test[:64]"})
    overrides.update(fields)
    return set_fields(c, overrides)


def set_fields(c, fields: dict):
    """c with {'section.field': value} set, whatever the value's type."""
    for key, value in fields.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        with node.ignore_type():
            node[leaf] = value
    return c
