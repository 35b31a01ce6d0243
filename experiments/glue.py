"""Fine-tune a BERT on one GLUE task (tfds `glue/<task>`): the variant is the task name.

    jaxlm finetune --config experiments/glue.py:mnli --workdir workdirs/glue/mnli
    jaxlm finetune --config experiments/glue.py:cola --workdir workdirs/glue/cola \\
        --config.model.init_from=hf:HF_BERT_DIR          # any Hugging Face BERT (its vocab.txt comes along)
    jaxlm evaluate --workdir workdirs/glue/mnli --split validation_mismatched

Variants: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli. The checkpoint is model.init_from: by default
the BERT-base pretrained by experiments/bert_base_wikipedia.py (`jaxlm:` its phase-2 workdir), or any jaxlm
workdir or Hugging Face BERT directory; its own tokenizer is used (data.tokenizer='init') and the classifier
head is fresh. The recipe is Hugging Face's run_glue for BERT-base: sequence length 128, batch 32, AdamW at
lr 2e-5, 3 epochs, linear decay after a warm-up over the first 10% of the steps (BERT's run_classifier);
evaluation on the validation split after every epoch, the best epoch kept by the task's GLUE metric
(`train.best_metric`): Matthews correlation for CoLA, Pearson's r for STS-B (a regression, num_labels 1:
squared error), F1 of the positive class for MRPC and QQP (accuracy beside it), accuracy for the rest. MNLI
is validated on validation_matched; the mismatched score is the `jaxlm evaluate` line above. GLUE's test splits
carry no labels (-1): they are for prediction files (`jaxlm predict --file`, a pair as 'text_a<TAB>text_b'),
never for metrics. Spearman's rank correlation for STS-B is not computed (it needs every prediction, and
jaxlm's evaluation sums metrics batch by batch).

Data: tfds downloads and prepares `glue/<task>` on first use (needs the network; MNLI and QQP are the large
ones, ~400k pairs each). Hardware: one GPU or TPU host; time is that of 3 epochs of BERT-base at batch 32 (on a
single Titan RTX, Hugging Face report 2.5 hours for MNLI, 26 minutes for SST-2, 3 minutes for CoLA). On
accelerators add --config.train.dtype=bfloat16.
Expected, with Google's bert-base-cased (Hugging Face's run_glue README, validation): CoLA MCC 56.5, SST-2 92.3,
MRPC F1/accuracy 88.9/84.1, STS-B Pearson 88.6, QQP accuracy/F1 90.7/87.5, MNLI matched/mismatched
83.9/84.1, QNLI 90.7, RTE 65.7, WNLI 56.3 (they trained MRPC and WNLI for 5 epochs). Not measured here; the
BERT-base of bert_base_wikipedia.py (Wikipedia only, no BooksCorpus) has no published numbers to compare with.
"""

from jaxlm import config as jaxlm_config

PRETRAINED = "jaxlm:workdirs/bert_base_wikipedia/phase2"

# task: (text fields, classes (1 = regression), GLUE metric, train examples, validation split)
TASKS = {
    "cola": (("sentence",), 2, "mcc", 8_551, "validation"),
    "sst2": (("sentence",), 2, "accuracy", 67_349, "validation"),
    "mrpc": (("sentence1", "sentence2"), 2, "f1", 3_668, "validation"),
    "qqp": (("question1", "question2"), 2, "f1", 363_846, "validation"),
    "stsb": (("sentence1", "sentence2"), 1, "pearson", 5_749, "validation"),
    "mnli": (("premise", "hypothesis"), 3, "accuracy", 392_702, "validation_matched"),
    "qnli": (("question", "sentence"), 2, "accuracy", 104_743, "validation"),
    "rte": (("sentence1", "sentence2"), 2, "accuracy", 2_490, "validation"),
    "wnli": (("sentence1", "sentence2"), 2, "accuracy", 635, "validation"),
}
BATCH_SIZE = 32
EPOCHS = 3


def get_config(variant: str = ""):
    if variant not in TASKS:
        raise KeyError(f"variant {variant!r}; name a GLUE task, experiments/glue.py:TASK with TASK one of "
                       f"{', '.join(TASKS)}")
    fields, classes, metric, train_size, eval_split = TASKS[variant]
    steps_per_epoch = -(-train_size // BATCH_SIZE)
    c = jaxlm_config.base()
    c.model.init_from = PRETRAINED
    c.task.name = "classify"
    c.task.num_labels = classes
    c.data.dataset = f"glue/{variant}"
    c.data.text_fields = fields
    c.data.eval_split = eval_split
    c.data.tokenizer = "init"
    c.data.max_seq_length = 128
    c.data.batch_size = BATCH_SIZE
    c.optim.learning_rate = 2e-5
    c.optim.warmup_steps = EPOCHS * steps_per_epoch // 10
    c.train.num_steps = 0
    c.train.num_epochs = EPOCHS
    c.train.log_every = 50
    c.train.eval_every = steps_per_epoch
    c.train.checkpoint_every = min(steps_per_epoch, 2000)
    c.train.best_metric = metric
    return c
