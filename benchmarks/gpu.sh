#!/usr/bin/env bash
# H200 check (issue 6, item 4): jaxlm vs transformers' PyTorch BertForPreTraining, bert-base pretraining
# step (MLM 15% + NSP, AdamW) at sequence 128 (batch 128) and 512 (batch 32), bfloat16 (jaxlm: bf16 compute,
# float32 parameters; torch: bf16 autocast, SDPA attention), tokens/s and MFU against the H200's dense bf16
# peak, 989 TFLOP/s as specified and the bf16 matmul peak measured in the same run (~790 in the device notes):
# both are printed. Goal there: MFU >= 45% and >= 1.3x PyTorch. Runs in about 6-7 minutes.
#
#   pass 1: BERT's recipe, attention dropout 0.1 (jaxlm's explicit softmax + dropout path; torch SDPA with
#           dropout), both rows: MLM logits at every position on both sides, and each side's best way
#   pass 2: attention dropout 0 (jaxlm: jax.nn.dot_product_attention -> cuDNN fused attention; torch: SDPA
#           flash), best row only
#
# Synthetic batches only: benchmarks/train_step.py imports jaxlm.steps, optim, sharding, train_state,
# models.bert, tasks.pretrain and monitor - never jaxlm.train or jaxlm.data (which pull tensorflow-datasets,
# grain and ml_collections). The H200 image holds jax (0.11), flax, optax, torch and transformers
# (KINDS.md's package list), so nothing needs to be carried.
#
# How to run it from a session lent the H200 (the device tool's `run`, from the repository root):
#
#     run(command="bash benchmarks/gpu.sh", timeout_s=540)
#
# If a package is missing there (python3 -m pip show flax optax says so), carry wheels, as the device notes
# describe. Here, once, in the repository root:
#
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#         --platform manylinux2014_x86_64 -d .whl flax==0.12.8 optax==0.2.8   # what is missing, pinned
#
# then run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540): this script installs .whl/*.whl
# into /tmp/site first when the folder is there.
#
# Output: the tables on stdout, and $OUT/gpu_bench.log + $OUT/gpu_*.json when $OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
OUT=${OUT:-/tmp/gpu_bench}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu_bench.log"
$PY -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, jax.devices(), '| flax', \
flax.__version__, '| optax', optax.__version__, '| torch', torch.__version__, '| transformers', \
transformers.__version__)" 2>&1 | tee -a "$OUT/gpu_bench.log"

common=(--device gpu --dtype bfloat16 --shapes bert-base:128,bert-base:512 --reps 5 --turn-seconds 1.5)
timeout 300 $PY benchmarks/train_step.py "${common[@]}" --json "$OUT/gpu_dropout.json" 2>&1 | tee -a "$OUT/gpu_bench.log"
timeout 200 $PY benchmarks/train_step.py "${common[@]}" --rows best --attention-dropout 0 \
  --json "$OUT/gpu_no_attention_dropout.json" 2>&1 | tee -a "$OUT/gpu_bench.log"
