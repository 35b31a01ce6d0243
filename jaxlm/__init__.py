"""jaxlm: BERT in JAX/Flax. `jaxlm.load(workdir)` gives a trained model to predict, evaluate and embed with."""

__version__ = "0.1.0"  # the one place it is set (pyproject.toml reads it); recorded in every run.json

from jaxlm import distributed as _distributed

_distributed.skip_absent_tpu()  # off a TPU VM, an installed libtpu (tpu and test extras) is never started: no noise


def load(workdir, *overrides: str):
    """A trained jaxlm workdir, restored and compiled once (`jaxlm.inference.Model`)."""
    from jaxlm.inference import load as _load  # jax and the data stack are imported when a model is loaded

    return _load(workdir, *overrides)
