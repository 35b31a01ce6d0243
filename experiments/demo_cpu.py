"""The main job: pretrain bert-mini on the embedded corpus, then fine-tune it on wordnet_lexname.

Command (what `bash scripts/main.sh` runs, about 10 minutes on 2 CPU cores):

    jaxlm pretrain --config experiments/demo_cpu.py:pretrain --workdir workdirs/demo/pretrain
    jaxlm finetune --config experiments/demo_cpu.py:finetune --workdir workdirs/demo/finetune
    jaxlm finetune --config experiments/demo_cpu.py:scratch  --workdir workdirs/demo/scratch

Data: WordNet glosses and fortunes (Debian `wordnet-base`, `fortunes`), a SentencePiece unigram tokenizer
of 8,000 pieces trained by jaxlm; wordnet_lexname classifies a gloss into its 45 lexicographer categories.
Hardware: any CPU. Expected: pretraining MLM loss from ~9 down to ~6; fine-tuned test accuracy well above
the majority class (noun.artifact, about 10%) and above the same fine-tuning from random initialisation.
"""

from jaxlm import config as jaxlm_config

PRETRAIN_WORKDIR = "workdirs/demo/pretrain"


def get_config(variant: str = "pretrain"):
    c = jaxlm_config.base()
    c.model.preset = "bert-mini"
    c.model.max_position_embeddings = 128
    c.data.max_seq_length = 64
    c.data.vocab_size = 8000
    c.data.tokenizer_max_sentences = 200_000
    c.train.log_every = 20
    c.mesh.data = -1
    if variant == "pretrain":
        c.data.dataset = "embedded_corpus"
        c.data.eval_split = "validation[:1024]"
        c.data.batch_size = 32
        c.data.eval_batch_size = 128
        c.task.max_predictions_per_seq = 10
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 30
        c.train.num_steps = 300
        c.train.eval_every = 150
        c.train.checkpoint_every = 150
    elif variant in ("finetune", "scratch"):
        c.task.name = "classify"
        c.data.dataset = "wordnet_lexname"
        c.data.eval_split = "validation[:2048]"
        c.data.test_split = "test"
        c.data.batch_size = 32
        c.data.eval_batch_size = 256
        c.data.buckets = (16, 32, 48)
        c.optim.learning_rate = 3e-4 if variant == "finetune" else 1e-3
        c.optim.warmup_steps = 30
        c.train.num_steps = 400
        c.train.eval_every = 200
        c.train.checkpoint_every = 200
        c.train.best_metric = "accuracy"
        if variant == "finetune":
            c.model.init_from = f"jaxlm:{PRETRAIN_WORKDIR}"
            c.data.tokenizer = "init"
        else:
            c.data.tokenizer = f"{PRETRAIN_WORKDIR}/tokenizer"
    else:
        raise KeyError(f"variant {variant!r}; expected pretrain, finetune or scratch")
    return c
