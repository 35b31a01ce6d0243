"""jaxlm: BERT in JAX/Flax."""
