#!/usr/bin/env bash
# The virtual environment of train_step.py's third side: KerasHub's BERT (`keras_hub.models.BertMaskedLM`)
# on keras 3's JAX backend. Its own environment, benchmarks/.venv-keras (gitignored), so keras and keras-hub
# never enter the project's .venv; train_step.py runs benchmarks/keras_worker.py with its interpreter.
#
#     bash benchmarks/keras_env.sh      # once, from anywhere; again to rebuild it from scratch
#
# jax and jaxlib pinned to the project's version, so both sides run the same XLA. keras-hub is installed
# without its dependencies: they include tensorflow-text (and through it tensorflow), sentencepiece,
# kagglehub and kagglesdk, which only its tokenizers and preset downloads use. `import keras_hub` does need
# the tokenizers module (its byte-pair tokenizer imports it at the top), without tokenizers' own dependencies
# (huggingface_hub and its HTTP stack); the import at the end checks that nothing else is missing.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-keras
rm -rf "$VENV"
python3.11 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q jax==0.10.2 jaxlib==0.10.2 keras==3.15.1 numpy absl-py packaging regex rich
"$VENV/bin/python" -m pip install -q --no-deps keras-hub==0.32.0 tokenizers==0.23.3
KERAS_BACKEND=jax JAX_PLATFORMS=cpu "$VENV/bin/python" -c "
import jax, keras, keras_hub
keras_hub.models.BertBackbone, keras_hub.models.BertMaskedLM
print(f'benchmarks/{\"$VENV\"}: jax {jax.__version__}, keras {keras.__version__} ({keras.backend.backend()}), '
      f'keras-hub {keras_hub.__version__}')"
du -sh "$VENV"
