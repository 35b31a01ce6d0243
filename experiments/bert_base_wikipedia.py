"""BERT-base pretraining (MLM + NSP) on English Wikipedia at the BERT paper's recipe, for a TPU v4-32 or v5e-64.

    jaxlm pretrain --config experiments/bert_base_wikipedia.py:phase1 --workdir workdirs/bert_base_wikipedia/phase1
    jaxlm pretrain --config experiments/bert_base_wikipedia.py:phase2 --workdir workdirs/bert_base_wikipedia/phase2

(run on every host of the pod, e.g. through the tpu/ scripts; the workdir on storage all hosts share). Then
fine-tune with experiments/glue.py, or `jaxlm convert --to-hf workdirs/bert_base_wikipedia/phase2 --out DIR`.

The recipe (Devlin et al. 2019, Section 3.1 and Appendix A.2; google-research/bert's flags): BERT-base (12 layers,
hidden 768, 12 heads, 110M parameters, dropout 0.1), batch 256 sequences, 1M steps, Adam lr 1e-4 (beta1 0.9,
beta2 0.999, weight decay 0.01, not on LayerNorm and biases), 10k warm-up steps then linear decay; 15% of the
tokens masked (80/10/10), at most 20 per sequence at length 128 and 80 at 512; 10% of instances shorter; NSP
pairs half of them random. "Sequence length 128 for 90% of the steps, then 512 for the remaining 10%" are the
two variants:
- `phase1`: 900k steps at length 128.
- `phase2`: 100k steps at length 512, starting from phase 1's parameters (`model.init_from='jaxlm:...phase1'`,
  which loads the encoder and the MLM and NSP heads, and reuses phase 1's tokenizer). It starts a fresh optimizer
  (Adam moments and step at 0, as google-research/bert's `init_checkpoint`, which restores only the trainable
  variables, does), so the paper's single linear decay is split in two: phase 1 decays 1e-4 -> 0 over its 900k
  steps, phase 2 warms up over 1k steps to 1e-5 (the paper's rate at step 900k) and decays to 0.
Differences from the paper: Wikipedia only (tfds `wikipedia/20230601.en`; the paper adds BooksCorpus, which tfds
does not ship), a SentencePiece unigram vocabulary of 30,522 pieces trained by jaxlm on 1M Wikipedia sentences
(the paper: its 30k WordPiece vocabulary; --config.data.tokenizer=DIR takes a directory with BERT's vocab.txt,
such as the MiniLM one of `jaxlm fetch-minilm`), bfloat16 compute with float32 parameters. Validation: the last
2,000 articles, held out of training.

Hardware: a TPU v4-32 (16 chips) or v5e-64 (64 chips), pure data parallelism (mesh data=-1; 110M parameters
and their Adam state, 1.8 GB, fit on every chip), 256 / chips sequences per chip. Time, from the FLOPs at 40% MFU
(estimated, not measured): phase 1 about 10 ms a step, 2.5 h on a v4-32; phase 2 about 45 ms, 1.2 h; at batch
256 a v5e-64 holds 4 sequences a chip and is bound by per-step overheads rather than FLOPs (for a larger batch use
LAMB, You et al. 2019: --config.optim.name=lamb with a batch and learning rate from their paper). Before the run,
once: prepare the dataset, a Beam pipeline (pip install apache-beam mwparserfromhell mwxml; `tfds build
wikipedia/20230601.en --file_format=array_record --data_dir=DIR`, a ~20 GB download, hours on one large VM), on
a disk every host sees at data.data_dir; each host's first run then tokenises the corpus and caches its
pretraining instances (several hours in one process), as phase 2 does again at length 512. Memory per chip,
checked before a TPU is paid for: `jaxlm compile --config experiments/bert_base_wikipedia.py:phase1 --topology v4-32`.

XLA flags. On TPU, the ones in `TPU_XLA_FLAGS` let collectives overlap with compute (asynchronous all-gathers and
collective fusion, as MaxText's TPU configs set them: what FSDP needs most, harmless under data parallelism);
tpu/tpu.py passes them as LIBTPU_INIT_ARGS: `python tpu/tpu.py up ... --xla-flags "$(python -c 'import
experiments.bert_base_wikipedia as e; print(e.TPU_XLA_FLAGS)')" -- pretrain ...`. libtpu 0.10.2 accepts them
(`LIBTPU_INIT_ARGS="..." jaxlm compile --config experiments/bert_base_wikipedia.py:phase1 --topology v5e-4`
compiles, 29% of HBM; an unknown flag stops libtpu); their speed-up was not measured (no TPU here). On several
GPUs, `XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true` overlaps NCCL collectives the same way.
Attention. The recipe's attention dropout (0.1) keeps the explicit softmax path; `--config.model.attention_dropout=0`
(a departure from the paper) lets `model.attention='auto'` take the Pallas splash kernel on TPU, which never forms
the attention matrix: at length 512 on a v5e-4, 832 sequences fit instead of 288 (`jaxlm compile`, README Speed).
"""

from jaxlm import config as jaxlm_config

WORKDIR = "workdirs/bert_base_wikipedia"
TPU_XLA_FLAGS = " ".join([
    "--xla_enable_async_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_tpu_enable_data_parallel_all_reduce_opt=true",
    "--xla_tpu_data_parallel_opt_different_sized_ops=true",
])


def get_config(variant: str = "phase1"):
    c = jaxlm_config.base()  # bert-base, batch 256, Adam 1e-4 / 10k warm-up / linear, 20 predictions at 128
    c.data.dataset = "wikipedia/20230601.en"
    c.data.train_split = "train[:-2000]"
    c.data.eval_split = "train[-2000:]"
    c.train.dtype = "bfloat16"
    if variant == "phase1":
        c.train.num_steps = 900_000
    elif variant == "phase2":
        c.model.init_from = f"jaxlm:{WORKDIR}/phase1"
        c.data.tokenizer = "init"
        c.data.max_seq_length = 512
        c.task.max_predictions_per_seq = 80
        c.optim.learning_rate = 1e-5
        c.optim.warmup_steps = 1_000
        c.train.num_steps = 100_000
    else:
        raise KeyError(f"variant {variant!r}; expected phase1 or phase2")
    return c
