"""What a config means: its task, model (architecture and initial weights), labels, mesh, identity and state.

    Experiment.from_config(config, vocab_size)   a run to train (model.init_from's weights kept to start from)
    Experiment.from_workdir(workdir, overrides)  a trained workdir's model, on this machine's devices
    resolve_tokenizer(config, workdir)           the run's tokenizer, trained or copied into the workdir

Training (`jaxlm.train`), `jaxlm compile` (`jaxlm.aot`), inference (`jaxlm.inference`) and the benchmarks all
build their state through `jaxlm.train_state`'s one recipe, on an experiment's model and mesh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from jaxlm import checkpoint, distributed, faults, hf, metric_sums, optim, sharding, storage, tasks, train_state
from jaxlm import config as jaxlm_config
from jaxlm.data import pipeline
from jaxlm import models
from jaxlm.models.transformer import Execution, TransformerConfig, check_splash_length, layer_layout

log = logging.getLogger(__name__)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# What `Experiment.from_workdir` lets a command change: the data it evaluates and the devices it runs on.
WORKDIR_OVERRIDES = ("data.", "mesh.", "model.attention")


def execution(config) -> Execution:
    """How config.model runs (attention path, remat, layer scan, dropout) in config.train.dtype."""
    m = config.model
    return Execution(dtype=DTYPES[config.train.dtype], hidden_dropout=m.hidden_dropout,
                     attention_dropout=m.attention_dropout, remat=m.remat, scan_layers=m.scan_layers,
                     attention=m.attention)


def resolve_tokenizer(config, workdir: epath.Path):
    """config.data.tokenizer: a directory (spm.model or vocab.txt), 'train' (SentencePiece trained on the
    dataset, kept in workdir/tokenizer), or 'init' (the tokenizer of model.init_from). Saved in the workdir."""
    from jaxlm.data.tokenizer import load_tokenizer, saved_in, train_tokenizer_from_dataset

    d, own = config.data, workdir / "tokenizer"
    if saved_in(own):
        return load_tokenizer(own)
    if d.tokenizer == "train":
        if jax.process_index() == 0:
            log.info("training a %s tokenizer (vocab %d) on %s", d.tokenizer_model_type,
                     d.vocab_size, d.dataset)
            with storage.staged(own) as out_dir:
                train_tokenizer_from_dataset(
                    d.dataset, vocab_size=d.vocab_size, model_type=d.tokenizer_model_type, out_dir=out_dir,
                    max_sentences=d.tokenizer_max_sentences, data_dir=d.data_dir or None, path=d.path or None,
                    text_field=d.text_fields[0], split=d.train_split, seed=config.train.seed)
        distributed.sync("tokenizer")
        return load_tokenizer(own)
    tokenizer = load_tokenizer(tokenizer_source(config))
    if jax.process_index() == 0:
        with storage.staged(own) as out_dir:
            tokenizer.save(out_dir)
    return tokenizer


def tokenizer_source(config) -> str:
    """The directory of a tokenizer that is not trained: config.data.tokenizer, or model.init_from's ('init')."""
    if config.data.tokenizer != "init":
        return config.data.tokenizer
    kind, _, where = config.model.init_from.partition(":")
    if kind not in ("hf", "jaxlm"):
        raise ValueError(f"config.data.tokenizer='init' takes model.init_from's tokenizer, but model.init_from="
                         f"{config.model.init_from!r} is not 'hf:DIR', 'hf:ORG/NAME' or 'jaxlm:WORKDIR'")
    if kind == "hf":
        return str(hf.locate(where, f"config.model.init_from={config.model.init_from!r}"))
    if not storage.path(where).is_dir():
        raise FileNotFoundError(f"config.model.init_from={config.model.init_from!r}: no such directory {where}")
    return os.fspath(storage.path(where) / "tokenizer")


def vocab_size(config) -> int:
    """The vocabulary the model gets, without training a tokenizer (config.data.vocab_size when it is trained)."""
    from jaxlm.data.tokenizer import load_tokenizer

    return config.data.vocab_size if config.data.tokenizer == "train" else load_tokenizer(
        tokenizer_source(config)).vocab_size


def model_config_from(config, vocab_size: int) -> tuple[TransformerConfig, dict | None]:
    """(model config, pretrained params or None) from config.model and its init_from.

    The pretrained params are the parts of model.init_from's that the task takes (`Task.pretrained_parts`: the
    encoder 'bert', and the MLM and NSP heads when pretraining goes on); the others start fresh."""
    m, run = config.model, execution(config)
    kind, _, where = (m.init_from or "none").partition(":")
    if kind == "hf":
        model_config, params = hf.from_pretrained(hf.locate(where, f"config.model.init_from={m.init_from!r}"),
                                                  "pretrain", **dataclasses.asdict(run))
    elif kind == "jaxlm":
        meta, params = checkpoint.restore_params(where)
        model_config = TransformerConfig.from_architecture(meta["identity"]["model"], run)
        params = layer_layout(jax.tree.map(np.asarray, params), model_config.num_layers, model_config.scan_layers)
    elif kind == "none":
        model_config = models.preset(m.preset, vocab_size=vocab_size, max_position_embeddings=m.max_position_embeddings,
                                   **{**m.overrides.to_dict(), **dataclasses.asdict(run)})
        params = None
    else:
        raise ValueError(f"config.model.init_from={m.init_from!r}: expected 'none', 'hf:DIR', 'hf:ORG/NAME' or "
                         "'jaxlm:WORKDIR'")
    if model_config.vocab_size != vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} tokens but the model ({m.init_from}) has "
                         f"vocab_size={model_config.vocab_size}; use the checkpoint's own tokenizer "
                         "(config.data.tokenizer='init')")
    if config.data.max_seq_length > model_config.max_position_embeddings:
        raise ValueError(f"config.data.max_seq_length={config.data.max_seq_length} exceeds the model's "
                         f"max_position_embeddings={model_config.max_position_embeddings}")
    if params is None:
        return model_config, None
    parts = tasks.TASKS[config.task.name].pretrained_parts
    return model_config, {p: jax.tree.map(np.asarray, params[p]) for p in parts if p in params}


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    path = storage.path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; is {workdir} a jaxlm workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


@dataclasses.dataclass
class Experiment:
    """A config's task, model, labels and mesh; `pretrained` holds model.init_from's parameters (to start from)."""

    config: Any
    task: tasks.Task
    model_config: TransformerConfig
    label_names: list[str] | None
    mesh: Any
    pretrained: dict | None = None

    def __post_init__(self):
        self.model = self.task.model(self.model_config, self.label_names)

    @classmethod
    def from_config(cls, config, vocab_size: int, devices=None, *, read_data: bool = True) -> "Experiment":
        """A run of `config` with a tokenizer of `vocab_size` tokens, on `devices` (default: this machine's, or the
        first mesh.data * mesh.fsdp * mesh.tensor of them). Bad settings fail here, before anything is written.
        Without `read_data` (to compile ahead), label names come from the config where it fixes their number."""
        task = tasks.create(config)
        mesh = _mesh(config, devices)
        sharding.check_batch_size("batch_size", config.data.batch_size, mesh, config.optim.accumulate)
        sharding.check_batch_size("eval_batch_size", config.data.eval_batch_size, mesh)
        if config.model.attention == "splash":  # (traced per bucket length, maybe only at the first eval)
            check_splash_length(config.data.max_seq_length, "config.data.max_seq_length")
            for length in config.data.buckets:
                check_splash_length(length, f"config.data.buckets={tuple(config.data.buckets)}")
        model_config, pretrained = model_config_from(config, vocab_size)
        return cls(config, task, model_config, task.label_names(read_data=read_data), mesh, pretrained)

    @classmethod
    def from_workdir(cls, workdir: str | os.PathLike, overrides: list[str] = ()) -> "Experiment":
        """The model a workdir holds, as saved, run as this machine prefers: data parallel over its devices
        (`mesh.*` overrides), attention 'auto' for this platform, no rematerialisation. `data.*` overrides say
        what to evaluate (a converted model never had data)."""
        workdir = storage.path(workdir)
        config = load_config(workdir)
        config.mesh.update(data=-1, fsdp=1, tensor=1)
        config.model.attention = "auto"
        for o in overrides:
            if not o.startswith(WORKDIR_OVERRIDES):
                raise jaxlm_config.ConfigError(
                    f"--config.{o}: a trained workdir takes overrides of config.data.*, config.mesh.* and "
                    "config.model.attention only (its model is what was trained)")
        jaxlm_config.override(config, list(overrides))
        config.model.remat = "none"  # (no gradients)
        saved = json.loads((workdir / "model.json").read_text())
        model_config = TransformerConfig.from_architecture(saved, execution(config))
        labels = workdir / "labels.json"
        names = json.loads(labels.read_text()) if labels.exists() else None
        mesh = _mesh(config, None)
        sharding.check_batch_size("eval_batch_size", config.data.eval_batch_size, mesh)
        return cls(config, tasks.create(config), model_config, names, mesh)

    # ------------------------------------------------------------------ identity and files

    def identity(self) -> dict:
        """What makes a checkpoint this experiment's: a workdir holding another one's is refused."""
        model = self.model_config.architecture()
        model["dtype"] = self.config.train.dtype  # bitwise resume is promised for the same compute dtype
        num_labels = len(self.label_names) if self.label_names else None
        return {"task": self.config.task.name, "dataset": self.config.data.dataset, "num_labels": num_labels,
                "model": model}

    def layout(self) -> dict:
        """How the state is laid out: a resume must match it (`model.init_from` converts it)."""
        return {"scan_layers": self.model_config.scan_layers}

    def save_files(self, workdir: epath.Path) -> None:
        """config.json, model.json (the architecture) and labels.json: what `from_workdir` reads."""
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(self.config.to_json_best_effort(indent=2) + "\n")
        (workdir / "model.json").write_text(json.dumps(self.model_config.architecture(), indent=2) + "\n")
        if self.label_names:
            (workdir / "labels.json").write_text(json.dumps(self.label_names) + "\n")

    # ------------------------------------------------------------------ state

    def optimizer(self, num_steps: int):
        """(optax transformation, learning-rate schedule) of config.optim over `num_steps`."""
        return optim.make_optimizer(ml_collections.ConfigDict({**self.config.optim.to_dict(), "num_steps": num_steps}))

    def init_state(self, tx) -> tuple[train_state.TrainState, Any]:
        """(a fresh sharded state from train.seed, its shardings), with model.init_from's parameters put in."""
        state, shardings = train_state.init(self.model, tx, self.mesh, jax.random.key(self.config.train.seed),
                                            max_seq_length=self.config.data.max_seq_length)
        if self.pretrained is None:
            return state, shardings
        params = dict(state.params)
        for name, tree in self.pretrained.items():
            expected = jax.tree.map(lambda x: (x.shape, x.dtype), params[name])
            got = jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), tree)
            if jax.tree.structure(expected) != jax.tree.structure(got) or expected != got:
                raise ValueError(f"the pretrained {name!r} parameters do not match the model's shapes")
            params[name] = jax.device_put(tree, shardings.params[name])
        return state.replace(params=params), shardings

    def abstract_params(self):
        """The parameters as ShapeDtypeStructs sharded on this mesh: the target of a restore for inference."""
        return train_state.abstract(self.model, optax.identity(), self.mesh, jax.random.key(0), max_seq_length=8).params

    def abstract_state(self, tx, key) -> train_state.TrainState:
        """The train state as ShapeDtypeStructs sharded on this mesh (`key` may be abstract): what to compile for."""
        return train_state.abstract(self.model, tx, self.mesh, key, max_seq_length=self.config.data.max_seq_length)

    # ------------------------------------------------------------------ evaluation

    def eval_fn(self, param_shardings):
        return self.task.eval_step(self.model, param_shardings, self.mesh)

    def evaluate(self, eval_fn, params, examples, batch_size: int) -> dict[str, float]:
        """One pass over every example exactly once (the last batch padded with weight 0), with a progress bar
        (process 0) that is gone when it ends."""
        from tqdm import tqdm

        index, count = sharding.host_data_shard(self.mesh)
        totals = None
        with sharding.mesh_context(self.mesh), tqdm(total=-(-len(examples) // batch_size), unit="batch",
                                                    desc="evaluating", leave=False, dynamic_ncols=True,
                                                    disable=jax.process_index() != 0) as bar:
            for batch in pipeline.eval_batches(examples, batch_size, process_index=index, process_count=count):
                sums = eval_fn(params, sharding.global_batch(batch, self.mesh))
                faults.hit("eval")
                totals = sums if totals is None else metric_sums.merge(totals, sums)
                bar.update()
        return self.task.summarize(jax.device_get(totals))


def _mesh(config, devices):
    m = config.mesh
    sizes = (m.data, m.fsdp, m.tensor)
    if devices is None and min(sizes) > 0:
        devices = jax.devices()[: int(np.prod(sizes))]  # fewer devices than all
    return sharding.make_mesh(*sizes, devices=devices)
