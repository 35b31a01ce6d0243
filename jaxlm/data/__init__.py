"""Data: tokenizers, tfds sources and builders, pretraining and classification examples, the batch pipeline."""
