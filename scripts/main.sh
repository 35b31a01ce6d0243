#!/usr/bin/env bash
# The main job, on the embedded default data (WordNet + fortunes): set everything up, then
#   1. train a SentencePiece tokenizer and pretrain bert-mini with MLM + NSP,
#   2. fine-tune it on wordnet_lexname (gloss -> one of 45 lexicographer categories),
#   3. fine-tune the same model from random initialisation,
# and print test accuracy beside the majority-class baseline. About 10 minutes on 2 CPU cores.
# Workdirs under workdirs/demo (delete it to start over; a rerun resumes or skips finished runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
jaxlm=.venv/bin/jaxlm
mkdir -p workdirs/demo
for step in "pretrain pretrain" "finetune finetune" "finetune scratch"; do
  set -- $step
  echo "== jaxlm $1 --config experiments/demo_cpu.py:$2 --workdir workdirs/demo/$2"
  "$jaxlm" "$1" --config "experiments/demo_cpu.py:$2" --workdir "workdirs/demo/$2" > "workdirs/demo.$2.json" || {
    echo "jaxlm $1 ($2) failed; its output is above" >&2; exit 1; }
done
.venv/bin/python - <<'PY'
import json
runs = {name: json.load(open(f"workdirs/demo/{name}/results.json")) for name in ("pretrain", "finetune", "scratch")}
pre = runs["pretrain"]["eval"]
print(f"\npretraining (bert-mini, {runs['pretrain']['step']} steps): validation MLM loss {pre['mlm_loss']:.3f}, "
      f"MLM accuracy {pre['mlm_accuracy']:.3f}, NSP accuracy {pre['nsp_accuracy']:.3f}")
print("\nwordnet_lexname test split (45 classes)")
print(f"{'':34}{'accuracy':>10}{'macro-F1':>10}{'MCC':>8}")
test = runs["finetune"]["test"]
print(f"{'majority class (from train)':34}{test['majority_accuracy']:>10.3f}{'':>10}{'':>8}")
for name, label in (("scratch", "fine-tuned from random init"), ("finetune", "fine-tuned from jaxlm pretraining")):
    t = runs[name]["test"]
    print(f"{label:34}{t['accuracy']:>10.3f}{t['macro_f1']:>10.3f}{t['mcc']:>8.3f}")
print("\nplots: workdirs/demo/*/loss.png, accuracy.png; TensorBoard: tensorboard --logdir workdirs/demo")
print('try: .venv/bin/jaxlm predict --workdir workdirs/demo/finetune "a small furry animal with long ears"')
PY
