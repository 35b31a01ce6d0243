"""Every shipped experiment config: it loads (each variant), names only base() fields, and is consistent; GLUE
end to end on tfds mock data; the real MiniLM fine-tuned by experiments/minilm_finetune.py beats the majority class."""

import csv
import functools
import importlib.util
import json
import pathlib
import random
import string

import jax
import ml_collections
import pytest
import tensorflow_datasets as tfds
from minilm import minilm_dir

from jaxlm import cli, experiment, optim, tasks, train
from jaxlm import config as jaxlm_config
from jaxlm.data.builders import BUILDERS, debian, embedded
from jaxlm.data.tokenizer import WordPieceTokenizer

REPO = pathlib.Path(__file__).parents[1]
EXPERIMENTS = REPO / "experiments"
VARIANTS = {
    "demo_cpu.py": ("pretrain", "finetune", "scratch"),
    "minilm_finetune.py": ("local", "local_pairs", "wordnet_lexname", "fortunes_topic"),
    "bert_base_wikipedia.py": ("phase1", "phase2"),
    "glue.py": ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"),
    "sweep_wordnet_lexname.py": ("finetune", "scratch"),
    "sentiment.py": ("binary", "regression", "reward", "pretrained", "scratch"),
    "gpt_cpu.py": ("pretrain", "movies"),
    "rlhf_sentiment.py": ("pretrain", "sft", "reward", "judge", "dpo", "rl", "rl_nokl"),
}
SPECS = [f"{name}:{variant}" for name, variants in VARIANTS.items() for variant in variants]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"experiment_{name[:-3]}", EXPERIMENTS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaves(c: ml_collections.ConfigDict, prefix: str = "") -> dict:
    out = {}
    for key, value in c.items():
        if isinstance(value, ml_collections.ConfigDict) and key != "overrides":
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_every_experiment_file_is_tested():
    assert sorted(p.name for p in EXPERIMENTS.glob("*.py")) == sorted(VARIANTS), "add new configs to VARIANTS"


@pytest.mark.parametrize("spec", SPECS)
def test_config_loads_and_is_consistent(spec):
    c = jaxlm_config.load(str(EXPERIMENTS / spec))
    base = _leaves(jaxlm_config.base())
    for field, value in _leaves(c).items():
        if field == "config_file":
            continue
        assert field in base, f"{spec}: config.{field} is not a field of jaxlm.config.base()"
        assert type(value) is type(base[field]), f"{spec}: config.{field}={value!r} vs base {base[field]!r}"
    assert c.task.name in tasks.TASKS
    d = c.data
    assert not d.buckets or max(d.buckets) < d.max_seq_length
    kind, _, where = c.model.init_from.partition(":")
    if kind == "none":  # the model builds: its parameters' shapes, without allocating them
        vocab = d.vocab_size if d.tokenizer == "train" else 30522  # a tokenizer directory: any vocab size
        model_config, _ = experiment.model_config_from(c, vocab)
        model = tasks.create(c).model(model_config, ["a", "b"])
        shapes = jax.eval_shape(model.init, jax.random.key(0), {"input_ids": jax.ShapeDtypeStruct((1, 8), "int32")})
        if c.model.preset == "bert-base":
            assert 109e6 < sum(x.size for x in jax.tree.leaves(shapes)) < 111e6  # 110M with the MLM and NSP heads
    else:  # a checkpoint another experiment (or `jaxlm fetch-minilm`) writes, with its own tokenizer
        assert kind in ("hf", "jaxlm") and d.tokenizer == "init", spec
        docs = " ".join(_module(name).__doc__ for name in VARIANTS)
        assert (f"--workdir {where}" if kind == "jaxlm" else f"--out {where}") in docs, f"{spec}: who writes {where}?"
    if c.train.num_steps:
        optim.make_schedule(ml_collections.ConfigDict({**c.optim.to_dict(), "num_steps": c.train.num_steps}))
    if d.dataset.partition("/")[0] not in BUILDERS:  # a tfds name: its fields, offline from the builder's code
        import tensorflow_datasets.text  # noqa: F401  (registers glue, wikipedia, ...)

        features = tfds.builder(d.dataset, data_dir="/nonexistent").info.features
        assert set(d.text_fields) <= set(features), f"{spec}: {d.text_fields} vs {list(features)}"
        if c.task.name == "classify":
            label = features[d.label_field]
            classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else 1
            assert c.task.num_labels == classes, spec


def test_glue_recipe_and_metrics():
    glue = _module("glue.py")
    metric = {k: jaxlm_config.load(f"{EXPERIMENTS / 'glue.py'}:{k}").train.best_metric for k in glue.TASKS}
    assert metric == {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "qqp": "f1", "stsb": "pearson",
                      "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    mnli = jaxlm_config.load(f"{EXPERIMENTS / 'glue.py'}:mnli")
    assert mnli.data.eval_split == "validation_matched" and mnli.data.test_split == ""
    steps = 3 * -(-392_702 // 32)
    assert (mnli.optim.learning_rate, mnli.data.batch_size, mnli.optim.warmup_steps) == (2e-5, 32, steps // 10)
    with pytest.raises(jaxlm_config.ConfigError, match="name a GLUE task"):
        jaxlm_config.load(str(EXPERIMENTS / "glue.py"))


def test_bert_base_wikipedia_phases():
    one, two = (jaxlm_config.load(f"{EXPERIMENTS / 'bert_base_wikipedia.py'}:{p}") for p in ("phase1", "phase2"))
    assert one.train.num_steps + two.train.num_steps == 1_000_000 and two.train.num_steps == 100_000
    assert (one.data.max_seq_length, two.data.max_seq_length) == (128, 512)
    assert (one.task.max_predictions_per_seq, two.task.max_predictions_per_seq) == (20, 80)
    assert one.data.batch_size == two.data.batch_size == 256
    assert all(256 % chips == 0 for chips in (16, 64))  # v4-32 and v5e-64: the batch splits over the chips
    assert two.model.init_from == f"jaxlm:{_module('bert_base_wikipedia.py').WORKDIR}/phase1"


# ------------------------------------------------------------------------------------------------ GLUE, mocked


class _DataSourceMock(tfds.testing.PickableDataSourceMock):
    """tfds 4.9.10's mock sets `__getitems__` as a plain attribute that misses `self`: bind it."""

    def __setattr__(self, name, value):
        if name == "__getitems__":
            value = functools.partial(value, self)
        super().__setattr__(name, value)


@pytest.mark.parametrize("task, metrics", [("mrpc", {"f1", "accuracy", "mcc"}), ("stsb", {"pearson", "mse"})])
def test_glue_task_end_to_end_on_mock_data(task, metrics, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXLM_DATA_DIR", str(tmp_path / "tfds"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase,
             *(f"##{c}" for c in string.ascii_lowercase)]  # mock texts are random letters
    WordPieceTokenizer(vocab).save(tmp_path / "tok")
    workdir = tmp_path / task
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE,
                                mock_array_record_data_source=_DataSourceMock()):
        code = cli.main([
            "finetune", "--config", f"{EXPERIMENTS / 'glue.py'}:{task}", "--workdir", str(workdir),
            "--config.model.init_from=none", "--config.model.preset=bert-L2-H128",
            f"--config.data.tokenizer={tmp_path / 'tok'}", "--config.data.max_seq_length=32",
            "--config.data.batch_size=8", "--config.train.num_epochs=0", "--config.train.num_steps=3",
            "--config.optim.warmup_steps=1", "--config.train.eval_every=3", "--config.mesh.data=1",
        ])
    assert code == 0, capsys.readouterr().err[-2000:]
    result = json.loads((workdir / "results.json").read_text())
    assert metrics <= set(result["eval"])
    assert (workdir / "best").is_dir()  # train.best_metric names a metric the evaluation reports


def test_unlabelled_split_is_refused_for_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXLM_DATA_DIR", str(tmp_path / "tfds"))
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "train.csv").write_text("text,label\na b,x\nb a,y\n")
    (tmp_path / "task" / "test.csv").write_text("text,label\na b,\nb b,\n")  # no labels, as GLUE's test splits
    c = jaxlm_config.load(str(EXPERIMENTS / "minilm_finetune.py"))
    c.data.path, c.data.max_seq_length = str(tmp_path / "task"), 16
    tokenizer = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])
    assert len(tasks.create(c).examples(tokenizer, "train")) == 2
    with pytest.raises(ValueError, match="split 'test': 2 of 2 examples have no label"):
        tasks.create(c).examples(tokenizer, "test")


# ------------------------------------------------------------------------------------------------ real MiniLM

MINILM_CLASSES = ("noun.animal", "noun.artifact", "noun.food", "noun.person")


def _wordnet_nouns(directory: pathlib.Path, sizes: dict[str, int]) -> pathlib.Path:
    """A local_classification folder: WordNet glosses of 4 noun categories, split as wordnet_lexname splits."""
    rows = {split: [] for split in sizes}
    for synset in debian.read_wordnet(debian.WORDNET_DIR):
        name, split = debian.LEXNAMES[synset.lexname], embedded.synset_split(synset)
        if name in MINILM_CLASSES and split in rows:
            rows[split].append((synset.gloss, name))
    directory.mkdir(parents=True)
    for split, size in sizes.items():
        random.Random(0).shuffle(rows[split])
        with open(directory / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *rows[split][:size]])
    return directory


def test_fetch_minilm_reuses_a_copy_and_refuses_a_foreign_directory(tmp_path, capsys):
    assert cli.main(["fetch-minilm", "--out", str(minilm_dir())]) == 0  # already there: nothing downloaded
    assert capsys.readouterr().out.startswith(str(minilm_dir()))
    (tmp_path / "other.txt").write_text("not a checkpoint")
    assert cli.main(["fetch-minilm", "--out", str(tmp_path)]) == 2
    assert "exists, is not empty and holds no config.json" in capsys.readouterr().err


@pytest.mark.slow  # a learning-quality check (80 s here); experiments/minilm_finetune.py states the result
def test_minilm_finetuned_beats_the_majority_class(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXLM_DATA_DIR", str(tmp_path / "tfds"))
    task = _wordnet_nouns(tmp_path / "nouns", {"train": 640, "test": 400})
    c = jaxlm_config.load(str(EXPERIMENTS / "minilm_finetune.py"))
    jaxlm_config.override(c, [
        f"model.init_from=hf:{minilm_dir()}", f"data.path={task}", "data.eval_split=", "data.test_split=test",
        "data.max_seq_length=32", "data.buckets=()", "data.batch_size=16", "train.num_epochs=0",
        "train.num_steps=40", "optim.learning_rate=2e-4", "optim.warmup_steps=4", "train.log_every=20",
        "mesh.data=1",
    ])
    test = train.train_and_evaluate(c, tmp_path / "w")["test"]
    print(f"MiniLM, 40 steps of 16: test accuracy {test['accuracy']:.3f}, majority {test['majority_accuracy']:.3f}")
    assert test["majority_accuracy"] > 0.25  # 4 unbalanced classes
    assert test["accuracy"] >= test["majority_accuracy"] + 0.20
