"""Test setup shared by every test: 8 fake CPU devices, set once before jax is imported; the `data_env` fixture."""

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
