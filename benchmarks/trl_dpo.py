"""jaxlm's DPO losses and metrics against TRL 1.16's DPOTrainer, on a tiny random GPT-2.

For each loss_type (sigmoid, robust with label_smoothing 0.1, hinge, ipo, sigmoid_norm) TRL's DPOTrainer runs one
training step on 6 preference pairs (one batch; a reference GPT-2 that is the policy with perturbed weights, so the
rewards are not zero) and its logged loss, rewards/{chosen,rejected,accuracies,margins} and logps/{chosen,rejected}
(computed on the forward before the update) are set beside jaxlm's: the same weights converted by
`jaxlm.hf.from_pretrained`, the same tokens packed two pairs a row by `DecoderPairs`, the reference's log-probabilities
as `ref_logps`, `DPO.loss` on the policy's logits and `DPO.summarize`. A word-level tokenizer makes TRL's
tokenisation exactly `prompt response<eos>`, the sequences jaxlm builds (checked). TRL runs in float32: its DPOConfig
defaults to bf16 autocast, even on CPU, which puts its logps 4e-4 (relative) off float32's. Exit 1 if any value
differs by more than 1e-4 (relative to the value's size where that is above 1); exit 2 without trl.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/trl_dpo.py        # needs trl==1.16.0 (pip install trl==1.16.0)
"""

import copy
import logging
import os
import sys
import tempfile
import warnings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TQDM_DISABLE", "1")
try:
    import trl
    from datasets import Dataset
except ImportError:
    print("trl is not importable: pip install trl==1.16.0", file=sys.stderr)
    sys.exit(2)
import jax
import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from jaxlm import config as jaxlm_config
from jaxlm import hf
from jaxlm.data.preferences import DecoderPairs
from jaxlm.models import gpt
from jaxlm.tasks import dpo

VOCAB, BETA, PAIRS_PER_ROW, LENGTH = 300, 0.5, 2, 64
CASES = [("sigmoid", 0.0), ("robust", 0.1), ("hinge", 0.0), ("ipo", 0.0), ("sigmoid_norm", 0.0)]
NOTE = ("sigmoid", 0.1)  # shown, not checked: TRL 1.16's sigmoid ignores label_smoothing, jaxlm's is cDPO
METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected"]


def tokenizer():
    """Word-level: 'w7' is id 7, '<eos>' id 0 (also the padding); no BOS, nothing merges across the prompt's end."""
    t = Tokenizer(models.WordLevel({"<eos>": 0, **{f"w{i}": i for i in range(1, VOCAB)}}, unk_token="<eos>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", pad_token="<eos>")


def gpt2s(directory):
    """(policy, reference): a random GPT-2 (weights large enough for O(1) logits) and it with perturbed weights,
    both saved under `directory` for jaxlm."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=32, n_layer=2, n_head=2,
                                     initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0)
    policy = transformers.GPT2LMHeadModel(config).eval()
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.3 * p.std() * torch.randn_like(p))
    for name, model in (("policy", policy), ("reference", reference)):
        model.save_pretrained(f"{directory}/{name}")
    return policy, reference


def pairs(count=6, seed=0):
    """(prompt, chosen + <eos>, rejected + <eos>) token ids: prompts of 1-5 tokens, responses of 1-7 and <eos>."""
    rng = np.random.default_rng(seed)
    draw = lambda lo, hi: rng.integers(1, VOCAB, rng.integers(lo, hi + 1)).astype(np.int32)  # noqa: E731
    eos = np.zeros(1, np.int32)
    return [(draw(1, 5), np.concatenate([draw(1, 7), eos]), np.concatenate([draw(1, 7), eos])) for _ in range(count)]


def trl_metrics(policy, reference, sides, loss_type, eps, directory):
    words = lambda ids: "".join(f" w{i}" for i in ids if i)  # noqa: E731  (TRL appends the <eos> itself)
    data = Dataset.from_list([{"prompt": words(p).lstrip(), "chosen": words(c), "rejected": words(r)}
                              for p, c, r in sides])
    args = trl.DPOConfig(output_dir=directory, loss_type=[loss_type], beta=BETA, label_smoothing=eps,
                         per_device_train_batch_size=len(sides), max_steps=1, logging_steps=1, learning_rate=0.0,
                         report_to=[], save_strategy="no", use_cpu=True, max_length=None, seed=0,
                         bf16=False)  # TRL's default is bf16 autocast, even on CPU
    trainer = trl.DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
                             train_dataset=data, processing_class=tokenizer())
    for callback in (transformers.PrinterCallback, transformers.ProgressCallback):  # its own printing of the logs
        trainer.remove_callback(callback)
    seen = trainer.train_dataset
    for k, (p, c, r) in enumerate(sides):  # TRL trains on exactly jaxlm's tokens
        assert (seen[k]["prompt_ids"], seen[k]["chosen_ids"], seen[k]["rejected_ids"]) == (
            p.tolist(), c.tolist(), r.tolist()), (k, seen[k])
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "rewards/chosen" in h)
    return {m: logged[m] for m in METRICS}


def jaxlm_metrics(directory, sides, loss_type, eps):
    rows = DecoderPairs(sides, max_seq_length=LENGTH, pairs_per_row=PAIRS_PER_ROW, pad_id=0, num_truncated=0)
    model_config, policy = hf.from_pretrained(f"{directory}/policy")
    _, reference = hf.from_pretrained(f"{directory}/reference")
    model = gpt.GPTLMHeadModel(model_config)
    batch = rows.batch(np.arange(len(rows)), 0, LENGTH)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "segment_ids")}
    logits = lambda params: model.apply({"params": params}, inputs, deterministic=True)["logits"]  # noqa: E731
    rows.ref_logps = np.asarray(dpo.sequence_logps(logits(reference), batch, PAIRS_PER_ROW)[0])
    batch = rows.batch(np.arange(len(rows)), 0, LENGTH)
    config = jaxlm_config.base()
    config.task.update(name="dpo", loss_type=loss_type, beta=BETA, label_smoothing=eps, pairs_per_row=PAIRS_PER_ROW,
                       reference="hf:unused")
    task = dpo.DPO(config)
    losses, counts, sums = task.loss({"logits": logits(policy)}, batch)
    summary = task.summarize(jax.device_get({**{f"{k}_loss_sum": v for k, v in losses.items()},
                                             **{f"{k}_count": v for k, v in counts.items()}, **sums}))
    assert summary["pairs"] == len(sides) and len(rows) == -(-len(sides) // PAIRS_PER_ROW)
    return {m: summary[m] for m in METRICS}


def main() -> int:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    print(f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}, jax "
          f"{jax.__version__}")
    sides, worst, failed = pairs(), 0.0, False
    with tempfile.TemporaryDirectory() as directory:
        policy, reference = gpt2s(directory)
        print(f"{'loss type':<20} {'metric':<19} {'TRL':>12} {'jaxlm':>12} {'abs diff':>9}")
        for loss_type, eps in CASES + [NOTE]:
            theirs = trl_metrics(policy, reference, sides, loss_type, eps, f"{directory}/trl")
            ours = jaxlm_metrics(directory, sides, loss_type, eps)
            label = f"{loss_type} eps={eps:g}"
            for m in METRICS:
                diff = abs(theirs[m] - ours[m])
                checked = (loss_type, eps) != NOTE or m != "loss"
                bad = checked and diff > 1e-4 * max(1.0, abs(theirs[m]))
                worst = max(worst, diff / max(1.0, abs(theirs[m]))) if checked else worst
                failed |= bad
                flag = "  MISMATCH" if bad else ("" if checked else "  (not checked)")
                print(f"{label:<20} {m:<19} {theirs[m]:>12.6f} {ours[m]:>12.6f} {diff:>9.2e}{flag}")
    print(f"note: TRL {trl.__version__}'s 'sigmoid' ignores label_smoothing (plain DPO); jaxlm's sigmoid with "
          "label_smoothing > 0 is cDPO, as TRL's was before v0.29")
    print(f"{'FAIL' if failed else 'OK'}: largest difference {worst:.2e} (relative where |value| > 1) over "
          f"{len(CASES)} loss types x {len(METRICS)} metrics")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
