"""Experiment configs: Python files with `get_config(variant)`, overridden by `--config.FIELD=VALUE`.

The config file is the one source of truth: code reads fields, it never invents them. A misspelt field
is an error that names the nearest valid fields.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib

import ml_collections


class ConfigError(ValueError):
    """A bad config file, variant or override; the message names what was expected."""


def load(spec: str) -> ml_collections.ConfigDict:
    """'experiments/FILE.py' or 'experiments/FILE.py:variant' -> the file's get_config([variant])."""
    path, _, variant = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {spec}: no such file {file}")
    module_spec = importlib.util.spec_from_file_location(f"jaxlm_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:  # (its own message: the line, not the frames of importlib)
        raise ConfigError(f"--config {spec}: {file}:{e.lineno}: {e.msg}: {(e.text or '').strip()!r}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{file}: defines no get_config()")
    try:
        config = module.get_config(variant) if variant else module.get_config()
    except KeyError as e:
        raise ConfigError(f"{file}: unknown variant {variant!r} ({e})") from e
    config.config_file = spec
    return config


def _paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        out.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(_paths(value, f"{prefix}{key}."))
    return out


def _parse(text: str, current):
    if isinstance(current, str):
        return text
    if isinstance(current, bool) or text.lower() in ("true", "false"):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() in ("true", "1")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if current is not None and not isinstance(value, type(current)) and not isinstance(current, (tuple, list)):
        raise ValueError(f"expected a {type(current).__name__} (like {current!r}), got {text!r}")
    return value


def override(config: ml_collections.ConfigDict, assignments: list[str]) -> ml_collections.ConfigDict:
    """Apply 'a.b.c=value' assignments (the part after `--config.`), checking each field exists."""
    valid = _paths(config)
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--config.{assignment}: expected --config.FIELD=VALUE")
        if name not in valid:
            near = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(f'config.{n}' for n in near)}?" if near else ""
            raise ConfigError(f"--config.{name}: no such config field{hint}")
        parent, _, leaf = name.rpartition(".")
        node = config
        for part in filter(None, parent.split(".")):
            node = node[part]
        try:
            value = _parse(text, node[leaf])
        except ValueError as e:
            raise ConfigError(f"--config.{name}={text}: {e}") from e
        with node.ignore_type():
            node[leaf] = value
    return config


def base() -> ml_collections.ConfigDict:
    """Every field a run reads, with BERT's values where the paper or google-research/bert set them.

    Experiment files start from this and change what differs; nothing else in jaxlm invents a default.
    """
    c = ml_collections.ConfigDict()
    c.model = dict(
        preset="bert-base",  # a name from jaxlm.models.PRESETS (bert.PRESETS, gpt.PRESETS)
        # 'none', 'jaxlm:WORKDIR', or a Hugging Face BERT or GPT-2: 'hf:DIR' or 'hf:ORG/NAME' (a Hub id, its cache)
        init_from="none",
        max_position_embeddings=512,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        remat="none",  # 'none', 'full', 'dots', 'dots_no_batch'
        scan_layers=False,
        attention="auto",  # 'auto', 'explicit', 'fused' or 'splash' (see jaxlm.models.transformer)
        overrides={},  # other TransformerConfig fields of a preset, e.g. {'num_heads': 8}
    )
    c.data = dict(
        dataset="embedded_corpus",  # a tfds name or a jaxlm builder (local_text, local_classification, ...)
        path="",  # the file, folder or glob of the local builders
        data_dir="",  # tfds data_dir; '' = $JAXLM_DATA_DIR or ~/.cache/jaxlm/tfds
        text_fields=("text",),  # one field, or two for pairs; reward: ('chosen',) or ('prompt', 'chosen')
        label_field="label",
        train_split="train",
        eval_split="validation",  # '' = no periodic evaluation
        test_split="",  # evaluated once at the end when set
        max_seq_length=128,
        tokenizer="train",  # a directory (spm.model or vocab.txt), 'train', or 'init' (model.init_from's)
        vocab_size=30522,  # of a tokenizer jaxlm trains
        tokenizer_model_type="unigram",  # SentencePiece's 'unigram' or 'bpe', or 'byte_bpe' (GPT-2's byte-level BPE)
        tokenizer_max_sentences=1_000_000,
        # processes tokenising a pretraining corpus, per host; 0 = all its cores (the same corpus for any number).
        # They import the script that started jaxlm: one calling jaxlm at its top level needs `if __name__ == ...`
        workers=0,
        batch_size=256,  # global, over all hosts and devices (reward: pairs)
        eval_batch_size=256,
        buckets=(),  # classification: pad each batch to the smallest of these lengths that fits
    )
    c.task = dict(
        # 'pretrain' (MLM + NSP), 'classify', 'reward' (preference pairs), 'causal_lm', 'sft', 'dpo', 'rloo'
        name="pretrain",
        mlm_probability=0.15,
        max_predictions_per_seq=20,
        short_seq_prob=0.1,
        whole_word=False,
        packed=False,  # MLM only, documents packed into full sequences (no NSP)
        split_sentences=True,
        num_labels=0,  # classify: 0 = from the dataset's label names; 1 = regression
        label_smoothing=0.0,  # reward, dpo: eps of -(1-eps) log sigmoid(d) - eps log sigmoid(-d)
        center_rewards_coefficient=0.0,  # reward: TRL's centring, coefficient * mean((r_chosen + r_rejected)^2)
        margin_scale=0.0,  # reward: d = r_chosen - r_rejected - margin_scale * the pair's margin (0: none)
        loss_type="sigmoid",  # dpo: TRL's 'sigmoid', 'robust', 'hinge', 'ipo', 'sigmoid_norm', or 'simpo'
        beta=0.1,  # dpo: the implicit KL's strength (IPO's tau; SimPO's reward scale); rloo: the KL penalty's
        simpo_gamma=0.5,  # dpo, loss_type 'simpo': the target reward margin
        reference="",  # dpo: the frozen reference, 'jaxlm:WORKDIR' or 'hf:DIR' ('' = model.init_from)
        pairs_per_row=4,  # dpo: preference pairs packed into one row of data.max_seq_length, at most
        reward_model="",  # rloo: the workdir of a 'reward' run, scoring the policy's completions
        advantage="rloo",  # rloo: 'rloo' (leave-one-out baseline) or 'grpo' (group mean and std)
        num_generations=4,  # rloo: completions sampled per prompt (TRL's num_generations)
        prompt_tokens=8,  # rloo: a prompt is the first this many tokens of config.data.text_fields[0]
        max_new_tokens=32,  # rloo: tokens per completion, at most (prompt + completion <= data.max_seq_length)
        temperature=1.0,  # rloo: sampling temperature of rollouts and evaluation (log-probabilities at it too)
        top_k=0,  # rloo: sample from the top_k most likely tokens only (0: all)
        epsilon=0.2,  # rloo: the ratio's clipping range, [1 - epsilon, 1 + epsilon]
        num_samples=4,  # rloo: completions written to samples.jsonl at each log line
    )
    c.optim = dict(
        name="adamw",  # or 'lamb'
        learning_rate=1e-4,
        warmup_steps=10_000,
        schedule="linear",  # 'linear', 'cosine' or 'constant' after warm-up
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        clip_norm=1.0,
        accumulate=1,  # micro-batches per step (gradients weighted by the real denominators)
    )
    c.train = dict(
        num_steps=1_000_000,  # 0 = num_epochs over the train split
        num_epochs=0,
        stop_after=0,  # stop (with a checkpoint) after this many steps of this invocation; 0 = run to the end
        seed=0,
        dtype="float32",  # compute dtype: 'float32' or 'bfloat16' (parameters stay float32)
        log_every=100,
        eval_every=10_000,
        checkpoint_every=10_000,
        keep=3,
        best_metric="",  # an eval metric to keep the best checkpoint by ('' = none)
        best_mode="max",
        on_nonfinite="skip",  # a non-finite loss/gradient is never applied; 'skip' goes on, 'stop' stops
        profile_start=0,  # a profiler trace (TensorBoard / Perfetto) of steps [start, start + steps)
        profile_steps=0,  # 0 = no trace; written to workdir/profile
        wandb_project="",  # also log to this Weights & Biases project (extra 'wandb'; WANDB_MODE=offline works)
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    return c
