#!/usr/bin/env bash
# The main job, on the embedded default data (WordNet + fortunes, and the human movie-review ratings): set up, then
#   1. train a SentencePiece tokenizer and pretrain a small BERT (bert-L2-H256) with masked-language modelling,
#   2. fine-tune it on wordnet_lexname (gloss -> one of 45 lexicographer categories), and the same model from
#      random initialisation: what the pretraining is worth,
#   3. fine-tune it on movie-review sentiment (sentences rated by ~20 people each) and answer the seed's example,
# printing each beside its trivial baseline. About 12 minutes on 2 CPU cores.
# Workdirs under workdirs/demo (delete it to start over; a rerun resumes or skips finished runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3
jaxlm=.venv/bin/jaxlm
mkdir -p workdirs/demo
for step in "pretrain demo_cpu.py:pretrain pretrain" "finetune demo_cpu.py:finetune finetune" \
            "finetune demo_cpu.py:scratch scratch" "finetune sentiment.py:pretrained sentiment"; do
  set -- $step
  echo "== jaxlm $1 --config experiments/$2 --workdir workdirs/demo/$3"
  "$jaxlm" "$1" --config "experiments/$2" --workdir "workdirs/demo/$3" > "workdirs/demo.$3.json" || {
    echo "jaxlm $1 ($3) failed; its output is above" >&2; exit 1; }
done
.venv/bin/python - <<'PY'
import json
runs = {name: json.load(open(f"workdirs/demo/{name}/results.json"))
        for name in ("pretrain", "finetune", "scratch", "sentiment")}
pre = runs["pretrain"]["eval"]
print(f"\npretraining (bert-L2-H256, MLM, {runs['pretrain']['step']} steps): validation MLM loss {pre['mlm_loss']:.3f}, "
      f"MLM accuracy {pre['mlm_accuracy']:.3f} (always the most frequent token: {pre['unigram_mlm_accuracy']:.3f}, "
      f"{pre['mlm_accuracy'] / pre['unigram_mlm_accuracy']:.1f}x)")
print(f"\n{'':44}{'accuracy':>10}{'macro-F1':>10}{'MCC':>8}")
print("wordnet_lexname test split (45 classes)")
test = runs["finetune"]["test"]
print(f"  {'majority class (from train)':42}{test['majority_accuracy']:>10.3f}")
for name, label in (("scratch", "fine-tuned from random init"), ("finetune", "fine-tuned from jaxlm pretraining")):
    t = runs[name]["test"]
    print(f"  {label:42}{t['accuracy']:>10.3f}{t['macro_f1']:>10.3f}{t['mcc']:>8.3f}")
t = runs["sentiment"]["test"]
print("movie-review sentiment test split (sentiment_ratings/movies_binary: negative / positive)")
print(f"  {'majority class (from train)':42}{t['majority_accuracy']:>10.3f}")
print(f"  {'fine-tuned from jaxlm pretraining':42}{t['accuracy']:>10.3f}{t['macro_f1']:>10.3f}{t['mcc']:>8.3f}")
PY
echo
echo '$ jaxlm predict --workdir workdirs/demo/sentiment "This is an amazing movie!"'
"$jaxlm" predict --workdir workdirs/demo/sentiment "This is an amazing movie!"
echo
echo "plots: workdirs/demo/*/loss.png, accuracy.png; TensorBoard: tensorboard --logdir workdirs/demo"
echo 'try: .venv/bin/jaxlm predict --workdir workdirs/demo/finetune "a small furry animal with long ears"'
