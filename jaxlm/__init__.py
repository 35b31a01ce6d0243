"""jaxlm: BERT in JAX/Flax. `jaxlm.load(workdir)` gives a trained model to predict, evaluate and embed with."""


def load(workdir, *overrides: str):
    """A trained jaxlm workdir, restored and compiled once (`jaxlm.inference.Model`)."""
    from jaxlm.inference import load as _load  # jax and the data stack are imported when a model is loaded

    return _load(workdir, *overrides)
