"""The trainer end to end: pretrain -> fine-tune -> evaluate -> predict, meshes, resume, accumulation."""

import functools
import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxlm
from jaxlm import checkpoint, cli, experiment, optim, steps, train, train_state
from tiny import DEMO, tiny

REPO = pathlib.Path(__file__).parents[1]


def _heads8(c):
    c.model.overrides = {"num_heads": 8}  # heads divisible by 8: tensor sharding is real
    return c


def test_pretrain_finetune_evaluate_predict(data_env, tmp_path, capsys, caplog):
    """Pretrained on 8 devices, fine-tuned on a data=2 x tensor=4 mesh, evaluated and predicted on one device."""
    pre = tmp_path / "pretrain"
    result = train.train_and_evaluate(_heads8(tiny("pretrain", data_env, **{"train.num_steps": 20})), pre)
    records = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert len(train_losses) == 4 and train_losses[-1] < train_losses[0]
    assert {"mlm_loss", "nsp_accuracy", "learning_rate", "grad_norm", "tokens_per_s", "mfu"} <= set(records[0])
    assert result["eval"]["mlm_loss"] < 6.5  # from ln(512) = 6.24 + NSP at the start, falling
    for name in ("loss.png", "accuracy.png", "run.json", "config.json", "model.json"):
        assert (pre / name).exists(), name
    assert list((pre / "tensorboard").glob("events.out.tfevents.*"))
    run = json.loads((pre / "run.json").read_text())
    assert run["versions"]["jax"] == jax.__version__ and run["versions"]["jaxlm"] == jaxlm.__version__
    assert re.fullmatch(r"[0-9a-f]{16}", run["id"])
    saved = json.loads((pre / "results.json").read_text())
    files = {p: p.stat().st_mtime_ns for p in pre.rglob("*") if p.is_file() and p.name != "run.lock"}
    with caplog.at_level(logging.INFO, logger="jaxlm.train"):  # finished
        again = train.train_and_evaluate(_heads8(tiny("pretrain", data_env, **{"train.num_steps": 20})), pre)
    assert again == saved and "finished at step 20" in caplog.text  # says so, and writes nothing
    assert {p: p.stat().st_mtime_ns for p in pre.rglob("*") if p.is_file() and p.name != "run.lock"} == files

    fine = tmp_path / "finetune"
    c = tiny("finetune", data_env, **{"train.num_steps": 20, "model.init_from": f"jaxlm:{pre}",
                                     "data.tokenizer": "init", "train.best_metric": "", "mesh.data": 2,
                                     "mesh.tensor": 4})
    result = train.train_and_evaluate(c, fine)
    assert set(result["test"]) >= {"accuracy", "macro_f1", "mcc", "loss", "majority_accuracy"}
    assert json.loads((fine / "results.json").read_text())["test"] == pytest.approx(result["test"])
    # The encoder started from the pretrained one: position rows beyond the data's length get no
    # gradient, only 20 steps of weight decay.
    _, pre_params = checkpoint.restore_params(pre)
    _, fine_params = checkpoint.restore_params(fine)
    pos = lambda p: np.asarray(p["bert"]["embeddings"]["position"]["embedding"])[40:]  # noqa: E731
    np.testing.assert_allclose(pos(fine_params), pos(pre_params), atol=1e-4)
    assert np.abs(pos(pre_params)).max() > 0.03

    # The final checkpoint, read back on one device (trained on data=2 x tensor=4): the same metrics.
    assert cli.main(["evaluate", "--workdir", str(fine), "--split", "test[:64]", "--config.mesh.data=1"]) == 0
    out = capsys.readouterr().out
    evaluated = json.loads(out[out.index("{\n"):])
    expected = {k: v for k, v in result["test"].items() if k != "majority_accuracy"}
    assert evaluated == pytest.approx(expected, rel=1e-5)
    assert cli.main(["evaluate", "--workdir", str(fine), "--config.train.seed=1"]) == 2  # the model is as trained
    assert "config.data.*, config.mesh.* and config.model.attention only" in capsys.readouterr().err
    texts = ["a domesticated carnivorous mammal", "move fast by using one's feet"]
    with caplog.at_level(logging.WARNING):
        assert cli.main(["predict", "--workdir", str(fine), *texts]) == 0
    assert "read only" not in caplog.text and "read_only" not in caplog.text  # orbax's notices, dropped
    lines = capsys.readouterr().out.strip().splitlines()
    labels = json.loads((fine / "labels.json").read_text())
    assert len(lines) == 2
    for line, text in zip(lines, texts):
        label, prob, echoed = line.split("\t")
        assert label in labels and 0 < float(prob) <= 1 and echoed == text
    # 70 texts go in batches of eval_batch_size (32: the last padded); each text's answer is the one it gets alone.
    many = [f"{text} number {i}" for i in range(35) for text in texts]
    model, one = jaxlm.load(fine), jaxlm.load(fine, "mesh.data=1")  # 8 devices (data parallel), 1 device
    assert model.experiment.mesh.size == 8 and one.experiment.mesh.size == 1
    ranked = model.predict(many, top=3)
    for i in (0, 33, 69):
        alone = one.predict([many[i]], top=3)[0]
        assert [label for label, _ in alone] == [label for label, _ in ranked[i]]
        np.testing.assert_allclose([p for _, p in alone], [p for _, p in ranked[i]], rtol=1e-5)
    # Embeddings: the same on 1 and 8 devices; a text's mean-pooled one is the same alone and beside a longer text
    # (its padding is left out), and differs from the pooled output.
    pooled, mean = model.embed(many[:3]), model.embed(many[:3], pooling="mean")
    assert pooled.shape == mean.shape == (3, 128) and not np.allclose(pooled, mean, atol=1e-3)
    np.testing.assert_allclose(one.embed(many[:3]), pooled, rtol=1e-5, atol=1e-6)
    short = "a cat"
    np.testing.assert_allclose(one.embed([short], pooling="mean")[0],
                               model.embed([short, many[1] * 3], pooling="mean")[0], rtol=1e-5, atol=1e-6)
    assert all(len(r) == 3 and r[0][1] >= r[1][1] >= r[2][1] and sum(p for _, p in r) <= 1 + 1e-6 for r in ranked)
    assert model.predict([]) == []
    assert cli.main(["predict", "--workdir", str(fine), "--top", "2", "--json", texts[0], ""]) == 0
    answer, empty = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    first, second = answer["top"]
    assert answer["text"] == texts[0] and (answer["label"], answer["probability"]) == tuple(first.values())
    assert first["label"] != second["label"] and first["probability"] >= second["probability"]
    np.testing.assert_allclose([first["probability"], second["probability"]],
                               [p for _, p in model.predict(texts[:1], top=2)[0]], rtol=1e-6)
    assert empty == {"text": "", "label": None, "probability": None, "top": []}
    # One output line per input line: an empty text gets an empty answer; a text cut to fit is counted.
    lines_in = [texts[0], "", "   ", " ".join([texts[1]] * 8)]
    (tmp_path / "texts.txt").write_text("\n".join(lines_in) + "\n")
    with caplog.at_level(logging.WARNING):  # (an empty argument first, then the file's lines)
        assert cli.main(["predict", "--workdir", str(fine), "--file", str(tmp_path / "texts.txt"), ""]) == 0
    out = capsys.readouterr().out.split("\n")
    assert out[0] == "\t\t" and out[2:4] == ["\t\t", "\t\t   "] and out[5] == "" and len(out) == 6
    assert [line.split("\t")[2] for line in out[1:5]] == lines_in and out[1].split("\t")[0] in labels
    assert "1 of 2 texts are longer than data.max_seq_length=32 tokens" in caplog.text


def _losses(data_env, workdir, mesh, **fields):
    c = tiny("pretrain", data_env, **{
        "train.num_steps": 20, "train.log_every": 1, "data.eval_split": "", "optim.learning_rate": 2e-3,
        "model.hidden_dropout": 0.0, "model.attention_dropout": 0.0,
        "mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2], **fields,
    })
    c.model.overrides = {"num_heads": 8}  # heads divisible by 8: tensor sharding is real
    train.train_and_evaluate(c, workdir)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in records if r["split"] == "train"])


def test_same_loss_trajectory_on_1_and_8_devices(data_env, tmp_path):
    one = _losses(data_env, tmp_path / "one", (1, 1, 1))
    assert len(one) == 20 and one[-5:].mean() < one[:5].mean() - 0.3
    np.testing.assert_allclose(_losses(data_env, tmp_path / "2x1x4", (2, 1, 4)), one, rtol=1e-5)
    # Stopped after 10 steps on an FSDP mesh, resumed on a 2x2x2 mesh: the same trajectory, the move on record.
    moved = tmp_path / "moved"
    first = _losses(data_env, moved, (1, 8, 1), **{"train.stop_after": 10})
    both = _losses(data_env, moved, (2, 2, 2))
    assert len(first) == 10 and len(both) == 20
    np.testing.assert_allclose(both, one, rtol=1e-5)
    record = json.loads((moved / "run.json").read_text())
    assert record["config"]["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and [
        (r["step"], r["changes"]) for r in record["resumes"]] == [(10, {
            "mesh.data": [1, 2], "mesh.fsdp": [8, 2], "mesh.tensor": [1, 2], "train.stop_after": [10, 0]})]


def test_bfloat16_and_float32_loss_curves_agree(data_env, tmp_path):
    f32 = _losses(data_env, tmp_path / "f32", (1, 1, 1), **{"train.num_steps": 15})
    bf16 = _losses(data_env, tmp_path / "bf16", (1, 1, 1), **{"train.num_steps": 15, "train.dtype": "bfloat16"})
    assert f32[-1] < f32[0] - 0.3 and bf16[-1] < bf16[0] - 0.3
    np.testing.assert_allclose(bf16, f32, rtol=0.02)  # bf16 keeps ~3 significant digits
    assert not np.array_equal(bf16, f32)  # and it really ran in bfloat16


def _final_params(workdir):
    return checkpoint.restore_params(workdir, prefer_best=False)[1]


def test_resume_in_a_fresh_process_is_bitwise_exact(data_env, tmp_path):
    # wordnet_lexname test[:200] as a tiny train set: 13 steps an epoch, so steps 5 -> 30 cross epochs.
    fields = {"train.num_steps": 30, "data.train_split": "test[:200]", "data.eval_split": "validation[:32]",
              "data.test_split": "", "train.checkpoint_every": 7}
    straight = tmp_path / "straight"
    train.train_and_evaluate(tiny("scratch", data_env, **fields), straight)
    # Stopped after 5 steps here, finished in a fresh process: only what is on disk carries over.
    resumed = tmp_path / "resumed"
    train.train_and_evaluate(tiny("scratch", data_env, **fields, **{"train.stop_after": 5}), resumed)
    assert checkpoint.Checkpoints(resumed, keep=3, identity={}).latest_step() == 5
    args = [sys.executable, "-m", "jaxlm.cli", "finetune", "--config", f"{DEMO}:scratch", "--workdir", str(resumed)]
    c = tiny("scratch", data_env, **fields)
    flat = {f"{k}.{f}": v for k in ("model", "data", "task", "optim", "train", "mesh")
            for f, v in c[k].items() if not isinstance(v, type(c))}
    overrides = [f"--config.{k}={v}" for k, v in flat.items() if k != "model.overrides"]
    second = subprocess.run(args + overrides, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                            text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr + second.stdout
    a, b = _final_params(straight), _final_params(resumed)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_gradient_accumulation_matches_one_large_batch(data_env):
    c = tiny("pretrain", data_env, **{"model.hidden_dropout": 0.0, "model.attention_dropout": 0.0,
                                      "data.batch_size": 32, "mesh.data": 1, "task.short_seq_prob": 0.9,
                                      "task.max_predictions_per_seq": 8})
    tokenizer = experiment.resolve_tokenizer(c, pathlib.Path(data_env / "acc"))
    run = experiment.Experiment.from_config(c, tokenizer.vocab_size)
    examples = run.task.examples(tokenizer, "train")
    counts = examples.batch(np.arange(128), 0, 32)["masked_weights"].sum(1)
    batch = examples.batch(np.argsort(counts, kind="stable")[::4], 0, 32)  # 32 rows, fewest masked tokens first
    per_micro = batch["masked_weights"].reshape(8, 4, -1).sum((0, 2))  # strided micro-batches
    assert len(set(per_micro.tolist())) > 1  # unequal masked-token counts
    c.optim.num_steps = 10
    tx, _ = optim.make_optimizer(c.optim)
    state, _ = train_state.init(run.model, tx, run.mesh, jax.random.key(0), max_seq_length=32)
    outs = []
    for accumulate in (1, 4):
        step = jax.jit(functools.partial(steps.train_step, model=run.model, tx=tx, loss=run.task.loss,
                                         accumulate=accumulate))
        new_state, metrics = step(state, batch, jax.random.key(1))
        outs.append((new_state.params, metrics))
    (p1, m1), (p4, m4) = outs
    assert float(m1["mlm_count"]) == float(m4["mlm_count"]) == float(batch["masked_weights"].sum())
    np.testing.assert_allclose(m4["mlm_loss_sum"], m1["mlm_loss_sum"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p4, p1)


def test_splash_attention_lengths_are_checked_before_the_run(data_env, tmp_path):
    """Bucket lengths are traced only when a batch of that length first comes (maybe at the first evaluation):
    a length the splash kernel cannot take is refused when the run is set up."""
    fields = {"model.attention": "splash", "model.attention_dropout": 0.0, "data.max_seq_length": 128}
    with pytest.raises(ValueError, match=r"model.attention='splash' needs sequence lengths that are multiples of "
                                         r"128, got 64 \(config.data.buckets=\(64, 128\)\)"):
        experiment.Experiment.from_config(tiny("scratch", data_env, **fields, **{"data.buckets": (64, 128)}), 512)
    with pytest.raises(ValueError, match=r"multiples of 128, got 96 \(config.data.max_seq_length\)"):
        experiment.Experiment.from_config(
            tiny("scratch", data_env, **{**fields, "data.max_seq_length": 96, "data.buckets": ()}), 512)


def test_misspelt_config_field_names_the_nearest(capsys):
    code = cli.main(["pretrain", "--config", DEMO, "--workdir", "/tmp/never", "--config.optim.lerning_rate=1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.optim.learning_rate" in err


def test_version_is_the_package_s(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"jaxlm {jaxlm.__version__}"
    assert metadata.version("jaxlm") == jaxlm.__version__  # pyproject.toml reads it from jaxlm/__init__.py


def _wandb_records(path: pathlib.Path) -> list:
    """The records of a W&B run file (its transaction log: LevelDB's log format, 32 KiB blocks of chunks, each
    chunk a 7-byte header: CRC, length, kind (1 full, 2 first, 3 middle, 4 last); after a 7-byte file header)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4) and pending:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_run_follows_the_workdir_across_a_resume(data_env, tmp_path, monkeypatch):
    """train.wandb_project, in wandb's offline mode: W&B gets the scalars metrics.jsonl gets, by step, and the
    results as its summary; a resume continues the same W&B run (run.json's id)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    fields = {"train.num_steps": 4, "train.log_every": 1, "train.stop_after": 2, "train.wandb_project": "jaxlm-test",
              "data.eval_split": ""}
    workdir = tmp_path / "run"
    train.train_and_evaluate(tiny("scratch", data_env, **fields), workdir)
    final = train.train_and_evaluate(tiny("scratch", data_env, **{**fields, "train.stop_after": 0}), workdir)
    run_id = json.loads((workdir / "run.json").read_text())["id"]
    files = sorted(workdir.glob("wandb/offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # two launches, one W&B run
    history, summary, names = {}, {}, set()
    for record in (r for f in files for r in _wandb_records(f)):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            names.add((record.run.run_id, record.run.project, record.run.display_name))
        elif kind in ("history", "summary"):
            items = record.history.item if kind == "history" else record.summary.update
            values = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
            if kind == "history" and "train/loss" in values:
                history[values["step"]] = values["train/loss"]
            summary.update(values if kind == "summary" else {})
    assert names == {(run_id, "jaxlm-test", "run")}
    jsonl = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert history == {r["step"]: pytest.approx(r["loss"]) for r in jsonl if r["split"] == "train"}
    assert sorted(history) == [1, 2, 3, 4]
    assert summary["test/accuracy"] == pytest.approx(final["test"]["accuracy"]) and summary["step"] == 4
