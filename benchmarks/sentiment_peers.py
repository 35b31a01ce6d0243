"""jaxlm's sentiment models beside their peers on the same held-out movie reviews (sentiment_ratings, test split).

    python benchmarks/sentiment_peers.py --reward workdirs/sentiment/reward [--regression workdirs/sentiment/regression]
        [--classifier workdirs/sentiment/binary] [--domain movies] [--plot workdirs/sentiment/peers.png]

Scorers: the jaxlm workdirs given (a reward model's score, a regression's value, a classifier's P(positive)),
VADER's own rule-based scorer from the same sdist (`SentimentIntensityAnalyzer().polarity_scores(text)['compound']`),
a single human rater (each snippet's first listed rating) against the mean of the others, and the trivial
baseline (a constant: the train split's mean rating, its majority class). Metrics: Pearson r with the mean
human rating over the test snippets; pairwise accuracy on the test preference pairs whose mean ratings differ by
more than 0.5 (uniformly drawn: sentiment_ratings' pairs; a tie in score counts one half); binary accuracy on
the binary test split (a score above the scorer's threshold is positive: 0 for VADER, the rater and a
regression, 0.5 for P(positive), the training mean for a reward model, from reward_normalization.json).
The human rater is scored against the others' mean, the models against everyone's.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from jaxlm.data import records, sources
from jaxlm.data.builders import human_ratings

GAP = 0.5


def _texts(rows, field="text") -> list[str]:
    return [records.as_text(r[field]) for r in rows]


def _rows(domain: str, kind: str, split: str) -> list[dict]:
    return list(records.iter_records(sources.open_source(f"sentiment_ratings/{domain}_{kind}", split)))


def vader_scores(texts: list[str]) -> np.ndarray:
    sys.path.insert(0, str(human_ratings.fetch()))  # the sdist's own package, fetched with the ratings
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts])


def pairwise(score: dict[str, float], pairs: list[dict]) -> float:
    wins = [float(score[c] > score[r]) + 0.5 * float(score[c] == score[r])
            for c, r in zip(_texts(pairs, "chosen"), _texts(pairs, "rejected"))]
    return float(np.mean(wins))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reward", help="a jaxlm reward workdir")
    p.add_argument("--regression", help="a jaxlm regression workdir (task classify, num_labels 1)")
    p.add_argument("--classifier", help="a jaxlm binary classifier workdir (negative / positive)")
    p.add_argument("--domain", default="movies", choices=list(human_ratings.CORPORA))
    p.add_argument("--plot", help="a PNG of every scorer against the mean human rating")
    args = p.parse_args(argv)

    test = _rows(args.domain, "regression", "test")
    texts, truth = _texts(test), np.array([r["label"] for r in test], np.float64)
    pairs = [r for r in _rows(args.domain, "preferences", "test") if round(float(r["rating_gap"]), 4) > GAP]
    binary = _rows(args.domain, "binary", "test")
    train = _rows(args.domain, "regression", "train")
    labels = np.array([r["label"] for r in binary])
    print(f"{args.domain} test split: {len(test)} snippets, {len(pairs)} pairs with rating gap > {GAP}, "
          f"{len(binary)} binary snippets ({labels.mean():.1%} positive)")

    scorers: dict[str, tuple[dict[str, float], float, np.ndarray]] = {}  # name: (text -> score, threshold, target)
    for name, workdir in (("jaxlm reward model", args.reward), ("jaxlm regression", args.regression),
                          ("jaxlm classifier P(positive)", args.classifier)):
        if not workdir:
            continue
        import jaxlm

        model = jaxlm.load(workdir)
        wanted = sorted(set(texts) | set(_texts(pairs, "chosen")) | set(_texts(pairs, "rejected")) | set(_texts(binary)))
        out = model.predict(wanted, top=len(model.label_names))
        values = [dict(ranked).get("positive", ranked[0][1]) for ranked in out]
        threshold = {"jaxlm classifier P(positive)": 0.5, "jaxlm regression": 0.0}.get(name)
        if threshold is None:
            threshold = json.loads((pathlib.Path(workdir) / "reward_normalization.json").read_text())["mean"]
        scorers[name] = (dict(zip(wanted, values)), threshold, truth)
    every = sorted(set(texts) | set(_texts(pairs, "chosen")) | set(_texts(pairs, "rejected")) | set(_texts(binary)))
    scorers["VADER compound (rule-based)"] = (dict(zip(every, vader_scores(every))), 0.0, truth)
    first = {records.as_text(r["text"]): float(r["ratings"][0]) for r in test}
    others = np.array([(r["ratings"].sum() - r["ratings"][0]) / (len(r["ratings"]) - 1) for r in test])
    scorers["a single human rater"] = (first, 0.0, others)
    mean_rating = float(np.mean([r["label"] for r in train]))
    positive = np.mean([r["label"] for r in _rows(args.domain, "binary", "train")]) > 0.5  # the majority class
    scorers["constant (train mean / majority)"] = (dict.fromkeys(every, mean_rating),
                                                   -np.inf if positive else np.inf, truth)

    print(f"\n{'':34}{'Pearson r':>10}{'pairwise':>10}{'binary':>9}")
    rows = {}
    for name, (score, threshold, target) in scorers.items():
        x = np.array([score[t] for t in texts])
        r = float(np.corrcoef(x, target)[0, 1]) if x.std() > 0 else float("nan")
        pair_acc = pairwise(score, pairs)
        bin_acc = float(np.mean([(score[t] > threshold) == bool(y) for t, y in zip(_texts(binary), labels)]))
        rows[name] = {"pearson": r, "pairwise_accuracy": pair_acc, "binary_accuracy": bin_acc}
        print(f"{name:34}{r:>10.3f}{pair_acc:>10.3f}{bin_acc:>9.3f}")
    print("\n(the human rater against the mean of the other raters; every other row against the mean of all)")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [n for n in scorers if not n.startswith("constant")]
        fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4), squeeze=False)
        for ax, name in zip(axes[0], shown):
            score, _, target = scorers[name]
            ax.scatter(target, [score[t] for t in texts], s=3, alpha=0.4)
            ax.set(title=f"{name}\nr = {rows[name]['pearson']:.3f}", xlabel="mean human rating (-4..+4)",
                   ylabel="score")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
