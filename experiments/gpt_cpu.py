"""A small GPT-2-style decoder on a CPU: causal-LM pretraining, then supervised fine-tuning, then generation.

Commands (2 CPU cores):

    jaxlm pretrain --config experiments/gpt_cpu.py:pretrain --workdir workdirs/gpt/pretrain
    jaxlm pretrain --config experiments/gpt_cpu.py:movies   --workdir workdirs/gpt/movies
    jaxlm generate --workdir workdirs/gpt/movies --temperature 0.8 --top-p 0.95 "This movie is"
    jaxlm convert  --to-hf workdirs/gpt/movies --out workdirs/gpt/movies-hf     (transformers' GPT2LMHeadModel)

Data: `pretrain` reads the embedded corpus (WordNet glosses and fortunes, Debian `wordnet-base` and `fortunes`);
`movies` the 10,605 rottentomatoes.com sentences of the human-feedback ratings (`sentiment_ratings/movies_regression`,
its text field only: a movie-review language model, the policy a later RL run starts from). The tokenizer is a
byte-level BPE of 4,096 tokens (GPT-2's kind, <|endoftext|> ends each document) trained by jaxlm on the data.
Recipe: gpt-mini (4 layers, hidden 256, 4 heads), 128-token rows of packed documents (no attention across them),
no dropout, AdamW 1e-3 with 50 warm-up steps then linear decay.
Expected (measured, `movies`, 2 CPU cores, 8 min 44 s): validation perplexity 158 (next-token accuracy 0.19) against
850 for a unigram model of the train split; train loss 7.9 -> 4.3, validation 5.6 -> 5.1 (loss.png). Samples at
temperature 0.8, top-p 0.95: "This movie is often made with a great screenplay." / "A sophisticated and
exploitational film that is a very little for a low budget story." `pretrain`: not measured yet.
"""

from jaxlm import config as jaxlm_config


def get_config(variant: str = "pretrain"):
    c = jaxlm_config.base()
    c.task.name = "causal_lm"
    c.model.preset = "gpt-mini"
    c.model.max_position_embeddings = 256
    c.model.hidden_dropout = 0.0
    c.model.attention_dropout = 0.0
    c.data.max_seq_length = 128
    c.data.tokenizer_model_type = "byte_bpe"
    c.data.vocab_size = 4096
    c.data.tokenizer_max_sentences = 200_000
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 50
    c.train.num_steps = 600
    c.train.log_every = 20
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.mesh.data = -1
    if variant == "pretrain":
        c.data.dataset = "embedded_corpus"
        c.data.eval_split = "validation[:256]"
    elif variant == "movies":
        c.data.dataset = "sentiment_ratings/movies_regression"
        c.data.eval_split = "validation"
    else:
        raise ValueError(f"unknown variant {variant!r}; expected 'pretrain' or 'movies'")
    return c
