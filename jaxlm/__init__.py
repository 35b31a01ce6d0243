"""jaxlm: BERT in JAX/Flax. `jaxlm.load(workdir)` gives a trained model to predict, evaluate and embed with."""

__version__ = "0.1.0"  # the one place it is set (pyproject.toml reads it); recorded in every run.json


def load(workdir, *overrides: str):
    """A trained jaxlm workdir, restored and compiled once (`jaxlm.inference.Model`)."""
    from jaxlm.inference import load as _load  # jax and the data stack are imported when a model is loaded

    return _load(workdir, *overrides)
