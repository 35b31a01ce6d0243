"""train_step.py's third side: KerasHub's `BertMaskedLM` trained with keras 3 on the JAX backend.

Runs in benchmarks/.venv-keras (made by benchmarks/keras_env.sh), started by train_step.py:

    benchmarks/.venv-keras/bin/python benchmarks/keras_worker.py --spec '{...}'

It never imports jaxlm (not installed there): only numpy, keras, keras_hub and train_step.py's module level
(the standard library and numpy), for the worker protocol and the shapes.

The model: `keras_hub.models.BertBackbone` with train_step.py's LAYERS (dropout 0.1, hidden and attention
alike: the backbone has one rate), `BertMaskedLM` on it (MLM logits at the masked positions only, the output
projection tied to the token embedding, as KerasHub ships it). No NSP head: KerasHub's BERT pretrains with MLM
alone, so this step leaves out the pooler's backward and the 2-way classifier (under 0.1% of the FLOPs).
Trained the way KerasHub users train: `compile()` with its default loss and weighted accuracy, `jit_compile`
(the JAX backend's default), `keras.optimizers.AdamW` set like the other sides (weight decay 0.01 off biases
and LayerNorm, global-norm clipping at 1.0), and `train_on_batch` in a loop on the batch held as jax arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from train_step import LAYERS, VOCAB, _cpu_seconds, _reply, _serve


def build(spec: dict):
    """KerasHub's model for `spec`, compiled for training, and step(n) -> seconds for n `train_on_batch` calls."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    layers, hidden, heads, inter = LAYERS[spec["preset"]]
    dtype = {"float32": "float32", "bfloat16": "mixed_bfloat16"}[spec["dtype"]]  # bf16 compute, f32 params
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=layers, num_heads=heads, hidden_dim=hidden, intermediate_dim=inter,
        dropout=0.1, max_sequence_length=512, dtype=dtype)
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    opt = keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                                 global_clipnorm=1.0)
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])  # LayerNormalization: gamma, beta
    model.compile(optimizer=opt)  # loss and weighted_metrics "auto": sparse cross-entropy, accuracy
    a = {k: keras.ops.convert_to_tensor(v) for k, v in np.load(spec["batch_file"]).items()}
    x = dict(token_ids=a["input_ids"], segment_ids=a["token_type_ids"], padding_mask=a["attention_mask"],
             mask_positions=a["masked_positions"])

    def step(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            model.train_on_batch(x, a["masked_ids"], sample_weight=a["masked_weights"])  # returns host floats
        return time.perf_counter() - start

    return model, step


def keras_worker(spec: dict) -> None:
    import keras
    import keras_hub

    t0 = time.perf_counter()
    _, step = build(spec)
    setup_s = time.perf_counter() - t0
    cpu0 = _cpu_seconds()
    first = step(1)  # builds the optimizer, traces and compiles the train function, runs one step
    first_cpu = _cpu_seconds() - cpu0
    cpu0 = _cpu_seconds()
    second = step(1)
    second_cpu = _cpu_seconds() - cpu0
    import jax  # the backend's, for the device name only

    _reply({"ready": True, "setup_s": setup_s, "compile_s": first - second, "compile_cpu_s": first_cpu - second_cpu,
            "first_step_s": second, "device": jax.devices()[0].device_kind,
            "versions": f"keras {keras.__version__} (jax {jax.__version__}), keras-hub {keras_hub.__version__}"})
    _serve(step, lambda: float("nan"))  # the matmul peak is measured by the jaxlm and torch workers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spec", required=True, help="train_step.py's worker spec, as JSON")
    args = p.parse_args()
    sys.stdout = sys.stderr  # stdout carries the protocol; library prints go to stderr
    spec = json.loads(args.spec)
    if spec.get("one_core"):  # before jax starts its thread pools, which size to the affinity
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1])
    keras_worker(spec)


if __name__ == "__main__":
    main()
