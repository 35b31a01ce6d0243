"""Test setup shared by every test: 8 fake CPU devices, set once before jax is imported; the `data_env` and `decoder`
fixtures."""

import json
import os
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, its subprocesses included: the many tiny runs (relaunches,
# trials, hosts) compile the same programs; a cached executable is the one XLA would compile again.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxlm-test-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def data_env(tmp_path_factory):
    """A private tfds data dir (JAXLM_DATA_DIR, for the whole session once asked for: built once, as on a fresh
    machine) and a 512-piece SentencePiece tokenizer trained on the embedded corpus."""
    root = tmp_path_factory.mktemp("data")
    old = os.environ.get("JAXLM_DATA_DIR")
    os.environ["JAXLM_DATA_DIR"] = str(root / "tfds")
    from jaxlm.data.tokenizer import train_tokenizer_from_dataset

    train_tokenizer_from_dataset("embedded_corpus", vocab_size=512, out_dir=root / "tok", max_sentences=4000)
    yield root
    if old is None:
        os.environ.pop("JAXLM_DATA_DIR")
    else:
        os.environ["JAXLM_DATA_DIR"] = old


@pytest.fixture(scope="session")
def bpe_dir(data_env, tmp_path_factory):
    """A 512-token byte-level BPE (GPT-2's kind) trained on the embedded corpus: the tiny decoders' tokenizer."""
    from jaxlm.data.tokenizer import train_tokenizer_from_dataset

    out = tmp_path_factory.mktemp("bpe512")
    train_tokenizer_from_dataset("embedded_corpus", vocab_size=512, model_type="byte_bpe", out_dir=out,
                                 max_sentences=4000)
    return out


@pytest.fixture(scope="session")
def decoder(bpe_dir, tmp_path_factory):
    """A tiny decoder pretrained for a few steps (the policy's and the reference's start) and a planted preference:
    every chosen answer says 'yes' at length, every rejected one 'no' (more likely, being short)."""
    from jaxlm import config as jaxlm_config
    from jaxlm import train
    from tiny import set_fields

    root = tmp_path_factory.mktemp("decoder")
    c = set_fields(jaxlm_config.load("experiments/gpt_cpu.py:pretrain"), {
        "model.preset": "gpt-tiny", "model.max_position_embeddings": 64, "data.max_seq_length": 32,
        "data.batch_size": 16, "data.tokenizer": str(bpe_dir), "data.eval_split": "", "optim.warmup_steps": 2,
        "train.num_steps": 4, "train.log_every": 4, "train.checkpoint_every": 4})
    train.train_and_evaluate(c, root / "pretrain")
    for split, count in (("train", 64), ("validation", 24)):
        rows = [{"prompt": f"Is {i} a number?", "chosen": f" yes, {i} is a number.", "rejected": " no."}
                for i in range(count)]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
