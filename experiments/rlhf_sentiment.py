"""Fine-tuning a decoder from human feedback, end to end on a CPU: continue the opening words of a movie review so
that people would rate it more positive, without drifting into nonsense (Ziegler et al. 2019; TRL's gpt2-sentiment).

    .venv/bin/python experiments/rlhf_sentiment.py               # every stage below, in order, skipping those done
    .venv/bin/python experiments/rlhf_sentiment.py rl evaluate   # some stages

A stage's training is also one `jaxlm` command (the script runs the same configs):

    jaxlm pretrain --config experiments/rlhf_sentiment.py:pretrain --workdir workdirs/rlhf/pretrain
    jaxlm pretrain --config experiments/rlhf_sentiment.py:sft      --workdir workdirs/rlhf/sft
    jaxlm train    --config experiments/rlhf_sentiment.py:reward   --workdir workdirs/rlhf/reward
    jaxlm train    --config experiments/rlhf_sentiment.py:judge    --workdir workdirs/rlhf/judge
    jaxlm finetune --config experiments/rlhf_sentiment.py:dpo      --workdir workdirs/rlhf/dpo   (after the pairs stage)
    jaxlm finetune --config experiments/rlhf_sentiment.py:rl       --workdir workdirs/rlhf/rl

Stages (workdirs/rlhf/STAGE; each a variant of this config, except pairs and evaluate):
- `pretrain`: causal-LM pretraining of gpt-mini on the embedded corpus (WordNet glosses, fortunes); its byte-level BPE
  trained by jaxlm on the corpus.
- `sft`: the decoder fine-tuned (causal LM) on the train split's movie-review sentences of the human ratings
  (sentiment_ratings/movies_regression), as gpt2-imdb is GPT-2 fine-tuned on reviews: the reference of what follows.
- `reward` / `judge`: MiniLM reward models (part 1's recipe, experiments/sentiment.py:reward) on disjoint halves of
  the train split's preference pairs: `reward` is optimised against, `judge` only measures (gaming one reward model
  does not count). (Part 1's workdirs/sentiment/reward, trained on all the pairs, could stand in for `reward`.)
- `pairs`: the SFT model's two samples for each of 2,048 train prompts, the one `reward` scores higher chosen;
  `dpo`: DPO (sigmoid, beta 0.1) on them from the SFT model.
- `rl`: RLOO from the SFT model against `reward`, KL penalty beta 0.05 to the SFT model, 250 steps of 16 prompts x 4
  completions; `rl_nokl`: the same with beta 0.
- `evaluate`: one completion per held-out prompt (the test split's opening words, kept out of every stage's data)
  at temperature 0.7 from each model; the judge's score on the human -4..+4 scale (calibrated linearly to the mean
  human ratings of the validation sentences), the win rate against SFT (a higher judge score on the same prompt, ties
  one half), KL to the SFT reference (per completion, at the sampling temperature), the reference's perplexity of
  the completions (fluency), distinct 1- and 2-grams (diversity); evaluation.json, samples.md and reward_vs_kl.png.

A prompt is the first PROMPT_TOKENS tokens of a sentence; completions are up to NEW_TOKENS tokens.
Measured (2 CPU cores; README.md's "Fine-tuning from human feedback" has the table, samples and times): on 512
held-out prompts the judge scores SFT -0.24, DPO +0.00, RLOO +1.47 (+1.71 above SFT, win rate 0.93, KL 10.5 nats,
SFT's perplexity of its samples 66.9 against 60.2 of SFT's own; but 5-token completions, mostly "good"); without
the KL penalty +1.74 with KL 162 nats and perplexity 968: "and and andful andious ...", reward hacking that fools
the judge too. Pretraining -> SFT -> DPO / RL -> evaluation about 27 min reusing the reward models; the whole
chain about 50 min.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from jaxlm import config as jaxlm_config

ROOT = pathlib.Path("workdirs/rlhf")
MOVIES = "sentiment_ratings/movies_regression"
PROMPT_TOKENS, NEW_TOKENS, TEMPERATURE = 6, 24, 0.7
PAIR_PROMPTS, EVAL_PROMPTS = 2048, 512
VARIANTS = ("pretrain", "sft", "reward", "judge", "dpo", "rl", "rl_nokl")
STAGES = ("pretrain", "sft", "reward", "judge", "pairs", "dpo", "rl", "rl_nokl", "evaluate")


def get_config(variant: str = "rl"):
    if variant not in VARIANTS:
        raise KeyError(f"variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if variant in ("reward", "judge"):
        c = jaxlm_config.load("experiments/sentiment.py:reward")
        c.data.train_split = "train[:50%]" if variant == "reward" else "train[50%:]"
        c.train.num_steps = 200
        c.data.test_split = "test[:1024]"
        c.data.eval_split = ""
        return c
    c = jaxlm_config.load("experiments/gpt_cpu.py:pretrain")
    if variant == "pretrain":
        c.train.num_steps = 200
        return c
    c.model.init_from = f"jaxlm:{ROOT / 'pretrain'}"
    c.data.tokenizer = "init"
    c.optim.warmup_steps = 20
    if variant == "sft":
        c.data.dataset = MOVIES
        c.data.eval_split = "validation"
        c.train.num_steps = 200
        c.train.eval_every = 100
        c.train.checkpoint_every = 100
        return c
    c.model.init_from = f"jaxlm:{ROOT / 'sft'}"
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.checkpoint_every = 50
    if variant == "dpo":
        c.task.name = "dpo"
        c.data.dataset, c.data.path = "local_preferences", str(ROOT / "pairs")
        c.data.text_fields = ("prompt", "chosen")
        c.data.eval_split = "validation"
        c.data.max_seq_length = 64
        c.task.pairs_per_row = 2
        c.data.batch_size = 16
        c.optim.learning_rate = 5e-5
        c.train.num_steps = 120
        return c
    c.task.name = "rloo"  # rl, rl_nokl
    c.task.reward_model = str(ROOT / "reward")
    c.task.beta = 0.05 if variant == "rl" else 0.0
    c.data.dataset = MOVIES
    c.data.eval_split = "validation[:64]"
    c.data.max_seq_length = PROMPT_TOKENS + NEW_TOKENS
    c.task.prompt_tokens, c.task.max_new_tokens = PROMPT_TOKENS, NEW_TOKENS
    c.task.num_generations = 4
    c.data.batch_size = 16  # prompts: 64 completions a step
    c.data.eval_batch_size = 64
    c.optim.learning_rate = 1e-4  # 5e-5 for 150 steps: +0.83 above SFT on the judge's scale, win rate 0.72
    c.optim.warmup_steps = 10
    c.train.num_steps = 250
    return c


# ---------------------------------------------------------------------- stages


def prompts(split: str, limit: int, tokenizer) -> list[str]:
    """The opening PROMPT_TOKENS tokens of the first `limit` sentences of a split, as text."""
    from jaxlm.data import sources
    from jaxlm.data.causal_lm import prompt_examples

    source = sources.open_source(MOVIES, split)
    examples = prompt_examples(source, text_field="text", tokenizer=tokenizer, prompt_tokens=PROMPT_TOKENS)
    return [tokenizer.decode(p) for p in examples.prompts[:limit]]


def make_pairs() -> None:
    """The SFT model's two samples per train prompt, ranked by the reward model: DPO's data."""
    import jaxlm

    sft, reward = jaxlm.load(ROOT / "sft"), jaxlm.load(ROOT / "reward")
    out = ROOT / "pairs"
    out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", PAIR_PROMPTS), ("validation", 256)):
        ps = prompts(split, count, sft.tokenizer)
        a, b = (sft.generate(ps, NEW_TOKENS, temperature=1.0, seed=seed) for seed in (1, 2))
        ra, rb = (reward.score([p + x for p, x in zip(ps, side)]) for side in (a, b))
        rows = [{"prompt": p, "chosen": x if sa >= sb else y, "rejected": y if sa >= sb else x}
                for p, x, y, sa, sb in zip(ps, a, b, ra, rb)
                if " ".join(x.split()) != " ".join(y.split()) and x.strip() and y.strip()]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"pairs: {len(rows)} {split} pairs in {out / f'{split}.jsonl'}")


def sample_logps(model, prompt_texts: list[str], completions: list[str], temperature: float):
    """(summed log-probabilities, tokens) of each completion after its prompt under a decoder's Model, at
    `temperature`."""
    import jax
    import numpy as np

    from jaxlm import generate as gen
    from jaxlm.tasks.rloo import completion_logps

    tok = model.tokenizer
    forward = jax.jit(lambda p, b: completion_logps(model.experiment.model.apply({"params": p}, b)["logits"],
                                                    b["completion"], temperature)[0])
    sums, counts = [], []
    for start in range(0, len(prompt_texts), 64):
        ps = [ids.tolist() for ids in tok.encode(prompt_texts[start:start + 64])]
        cs = [ids.tolist()[:NEW_TOKENS] for ids in tok.encode(completions[start:start + 64])]
        ids, mask = gen.left_pad(ps, tok.pad_id)
        comp = np.full((len(cs), NEW_TOKENS), tok.pad_id, np.int32)
        cmask = np.zeros((len(cs), NEW_TOKENS), np.float32)
        for i, c in enumerate(cs):
            comp[i, :len(c)], cmask[i, :len(c)] = c, 1
        batch = {"input_ids": np.concatenate([ids, comp], 1),
                 "attention_mask": np.concatenate([mask, cmask.astype(np.int32)], 1), "completion": comp}
        sums.append((np.asarray(forward(model.params, batch)) * cmask).sum(1))
        counts.append(cmask.sum(1))
    return np.concatenate(sums), np.concatenate(counts)


def distinct(texts: list[str], n: int) -> float:
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def evaluate() -> dict:
    """Every model's completions of the held-out prompts, judged; evaluation.json, samples.md, reward_vs_kl.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import jaxlm
    from jaxlm.data import records, sources

    judge, reward, sft = jaxlm.load(ROOT / "judge"), jaxlm.load(ROOT / "reward"), jaxlm.load(ROOT / "sft")
    val = list(records.iter_records(sources.open_source(MOVIES, "validation")))
    raw = judge.score([records.as_text(r["text"]) for r in val])
    a, b = np.polyfit(raw, np.array([float(r["rating"]) for r in val]), 1)  # the judge on the human scale
    norm = json.loads((ROOT / "reward" / "reward_normalization.json").read_text())
    ps = prompts("test", EVAL_PROMPTS, sft.tokenizer)
    models = {"sft": sft, **{m: jaxlm.load(ROOT / m) for m in ("dpo", "rl", "rl_nokl") if (ROOT / m).exists()}}
    results, texts = {}, {}
    for name, model in models.items():
        completions = model.generate(ps, NEW_TOKENS, temperature=TEMPERATURE, seed=0)
        full = [p + c for p, c in zip(ps, completions)]
        human = a * judge.score(full) + b
        own, n = sample_logps(model, ps, completions, TEMPERATURE)
        ref, _ = sample_logps(sft, ps, completions, TEMPERATURE)
        ref1, _ = sample_logps(sft, ps, completions, 1.0)
        texts[name] = (completions, human)
        results[name] = {
            "judge_score": float(human.mean()),
            "reward": float(((reward.score(full) - norm["mean"]) / norm["std"]).mean()),
            "kl": float((own - ref).mean()), "ref_perplexity": float(np.exp(-ref1.sum() / max(n.sum(), 1))),
            "distinct_1": distinct(completions, 1), "distinct_2": distinct(completions, 2),
            "mean_tokens": float(n.mean())}
    base = texts["sft"][1]
    for name in results:
        h = texts[name][1]
        results[name]["win_rate_vs_sft"] = float(np.mean((h > base) + 0.5 * (h == base)))
    summary = {"prompts": len(ps), "temperature": TEMPERATURE, "judge_calibration": {"a": a, "b": b},
               "models": results}
    (ROOT / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")

    lines = ["# Completions of held-out prompts (judge score, human scale)", ""]
    for name, (completions, human) in texts.items():
        order = np.argsort(-human)
        lines += [f"## {name}: best", *(f"- {human[i]:+.2f} **{ps[i]}**{completions[i]}" for i in order[:5]),
                  f"## {name}: worst", *(f"- {human[i]:+.2f} **{ps[i]}**{completions[i]}" for i in order[-5:]), ""]
    (ROOT / "samples.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    colour = {"sft": "C0", "dpo": "C1", "rl": "C2", "rl_nokl": "C3"}
    for name in ("rl", "rl_nokl"):
        file = ROOT / name / "metrics.jsonl"
        train = [r for r in map(json.loads, file.read_text().splitlines()) if r["split"] == "train"] \
            if file.exists() else []
        if train:
            ax.plot([r["kl"] * r["completions/mean_length"] for r in train], [r["score"] for r in train], alpha=0.4,
                    color=colour[name], label=f"{name} training (every 10 steps)")
    for name, r in results.items():
        ax.scatter([r["kl"]], [r["reward"]], s=40, color=colour[name], label=f"{name} on held-out prompts")
    ax.set_xlabel("KL to the SFT reference, per completion (nats)")
    ax.set_ylabel("reward (normalised)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ROOT / "reward_vs_kl.png", dpi=120)
    print(json.dumps(summary, indent=2))
    return summary


def train_stage(name: str) -> None:
    from jaxlm import train

    config = get_config(name)
    result = train.train_and_evaluate(config, ROOT / name)
    print(f"{name}: " + json.dumps({k: result.get(k) for k in ("step", "eval", "test")}))


def main(argv: list[str]) -> int:
    stages = argv or list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        print(f"rlhf_sentiment.py: unknown stage {unknown[0]!r}; expected some of {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    times = {}
    for stage in stages:
        began = time.perf_counter()
        if stage == "pairs":
            if not (ROOT / "pairs" / "train.jsonl").exists():
                make_pairs()
        elif stage == "evaluate":
            evaluate()
        else:
            train_stage(stage)
        times[stage] = round(time.perf_counter() - began, 1)
        print(f"[{stage}] {times[stage]} s")
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "times.json").write_text(json.dumps(times, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.exit(main(sys.argv[1:]))
