"""The `sentiment_ratings` tfds builder: 23,700 snippets each rated by about 20 people (Hutto & Gilbert, ICWSM 2014).

The ground truth of the VADER paper, shipped in the source distribution of `vaderSentiment` 3.3.2 (MIT licence;
`jaxlm fetch-ratings` downloads it once): four corpora of sentence-level snippets, every snippet rated for
sentiment intensity on -4..+4 by about 20 screened raters (tweets: about 100), every rater's rating kept.

| domain   | snippets | from                                              |
|----------|---------:|---------------------------------------------------|
| movies   |   10,605 | rottentomatoes.com sentences (Pang & Lee 2004)    |
| tweets   |    4,200 | Twitter's public timeline                         |
| products |    3,708 | customer reviews (Hu & Liu 2004)                  |
| nyt      |    5,190 | New York Times opinion editorials                 |

Configs are `<domain>_<kind>`, domain one of the above or `all`, kind one of:

- `regression`: text -> label, the mean rating (float); also `rating_std` and every rater's `ratings`.
- `binary`: text -> negative / positive, the mean's sign. Snippets rated near neutral, |mean| < 0.5 (half a
  step of the scale), are left out: the raters did not call them either way.
- `preferences`: (chosen, rejected) pairs, as rated data is binarised for reward models. Within a domain and a
  split, the snippets are put in the order of a stable hash and each is paired with the next PAIRS_PER_SNIPPET
  snippets in that order (cyclically): uniformly drawn pairs, every snippet in 2 x PAIRS_PER_SNIPPET of them.
  The snippet of the higher mean rating is `chosen`. Ties (equal means) and two identical texts are no pair.
  Rater disagreement is kept, not filtered: `strength` is the probability that a random rating of the chosen
  snippet exceeds a random rating of the rejected one, ties counting one half (the raters are anonymous and
  differ per snippet, so the two snippets' rating lists are compared as samples), and `margin` its log-odds
  logit(clip(strength, 0.01, 0.99)), the reward gap a Bradley-Terry model of the raters implies (the reward
  task's optional margin). Also `chosen_rating`, `rejected_rating` (the means) and `rating_gap` (their
  difference).

Splits: 80/10/10 train/validation/test by a stable hash of the normalised text (lower case, whitespace
collapsed), the same on every machine: the few texts that occur twice (movies 2, products 11, nyt 71) fall in
one split, and no pair holds two identical texts. Within a split the examples are in a stable hash order.

The source's own flaw, kept visible: for 199 tweets the ground-truth mean is not the mean of the ratings listed
for the same id (by up to 1.13); the ground truth's mean is the label, as the paper published it, and the listed
ratings give `strength`.
"""

import dataclasses
import functools
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from jaxlm.data.builders import local_files

PACKAGE = "vaderSentiment==3.3.2"
CORPORA = {  # domain -> the files' prefix in hutto_ICWSM_2014/
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "products": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
KINDS = ("regression", "binary", "preferences")
VARIANTS = tuple(f"{d}_{k}" for d in (*CORPORA, "all") for k in KINDS)
NEUTRAL = 0.5  # binary: snippets with |mean rating| below this are left out
PAIRS_PER_SNIPPET = 4
SPLITS = ("train", "validation", "test")


def default_dir() -> pathlib.Path:
    """Where `jaxlm fetch-ratings` puts the data: $JAXLM_RATINGS_DIR, else ~/.cache/jaxlm/vader-sentiment-3.3.2."""
    return pathlib.Path(os.environ.get("JAXLM_RATINGS_DIR") or "~/.cache/jaxlm/vader-sentiment-3.3.2").expanduser()


def fetch(directory: str | os.PathLike | None = None) -> pathlib.Path:
    """`directory` holding `hutto_ICWSM_2014/` (the ratings, the paper) and `vaderSentiment/` (VADER's scorer).

    Downloaded once with `pip download --no-binary :all:` of the pinned sdist (the network or a pip index is
    needed) and unpacked; a directory that already holds the ratings is returned as it is.
    """
    directory = pathlib.Path(directory).expanduser() if directory else default_dir()
    if (directory / "hutto_ICWSM_2014").is_dir():
        return directory
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory}: exists, is not empty and holds no hutto_ICWSM_2014/; give a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                               PACKAGE, "-d", tmp])
        if done.returncode:
            raise ConnectionError(f"`pip download --no-binary :all: {PACKAGE}` failed (exit {done.returncode}, pip's "
                                  "message above); it needs the network or a pip index that has the package")
        (sdist,) = pathlib.Path(tmp).glob("*.tar.gz")
        staged = pathlib.Path(tmp) / "staged"
        with tarfile.open(sdist) as tar:
            tar.extractall(pathlib.Path(tmp) / "sdist", filter="data")
        (root,) = (pathlib.Path(tmp) / "sdist").iterdir()
        with tarfile.open(root / "additional_resources" / "hutto_ICWSM_2014.tar.gz") as tar:
            tar.extractall(staged, filter="data")
        shutil.copytree(root / "vaderSentiment", staged / "vaderSentiment")
        if directory.exists():
            directory.rmdir()  # empty (checked above)
        staged.rename(directory)  # all of it appears at once
    return directory


@dataclasses.dataclass(frozen=True)
class Snippet:
    domain: str
    id: str
    text: str
    mean: float
    std: float
    ratings: tuple[int, ...]

    @property
    def key(self) -> str:
        """The normalised text: what splits and duplicates are decided by."""
        return " ".join(self.text.lower().split())


def _lines(path: pathlib.Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; `jaxlm fetch-ratings` downloads the ratings")
    text, _ = local_files.read_text(path)  # UTF-8, a leading byte-order mark dropped, CRLF or LF
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def read_domain(root: pathlib.Path, domain: str) -> list[Snippet]:
    """The snippets of one corpus: its ground truth (id, mean, text) joined by id with every rater's rating."""
    prefix = root / CORPORA[domain]
    truth = prefix.with_name(f"{prefix.name}_GroundTruth.txt")
    ratings = prefix.with_name(f"{prefix.name}_anonDataRatings.txt")
    rated = {}
    for number, fields in enumerate(_lines(ratings), start=1):
        if len(fields) != 4:
            raise ValueError(f"{ratings}:{number}: expected id, mean, std, [ratings] (4 fields), got {len(fields)}")
        values = tuple(int(v) for v in fields[3].strip().strip("[]").split(","))
        rated[fields[0].strip()] = (float(fields[2]), values)
    snippets = []
    for number, fields in enumerate(_lines(truth), start=1):
        if len(fields) < 3:
            raise ValueError(f"{truth}:{number}: expected id, mean, text (3 fields), got {len(fields)}")
        id_, mean, text = fields[0].strip(), float(fields[1]), "\t".join(fields[2:]).strip()
        if id_ not in rated:
            raise ValueError(f"{truth}:{number}: id {id_!r} has no ratings in {ratings}")
        std, values = rated[id_]
        snippets.append(Snippet(domain, id_, text, mean, std, values))
    return snippets


def split_of(snippet: Snippet) -> str:
    return local_files.split_of(f"ratings:{snippet.key}")


def _order(snippet: Snippet) -> float:
    return local_files.stable_fraction(f"order:{snippet.domain}:{snippet.id}")


def strength(chosen: tuple[int, ...], rejected: tuple[int, ...]) -> float:
    """P(a random rating of `chosen` > a random rating of `rejected`), ties counting one half."""
    a, b = np.asarray(chosen)[:, None], np.asarray(rejected)[None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


def pairs(snippets: list[Snippet], per_snippet: int = PAIRS_PER_SNIPPET) -> list[tuple[Snippet, Snippet]]:
    """(chosen, rejected) pairs of one domain's split, drawn as the module docstring says."""
    ordered = sorted(snippets, key=_order)
    n, out = len(ordered), []
    for k in range(1, min(per_snippet, (n - 1) // 2) + 1):  # k < n / 2: no pair drawn twice
        for i, a in enumerate(ordered):
            b = ordered[(i + k) % n]
            if a.mean != b.mean and a.key != b.key:
                out.append((a, b) if a.mean > b.mean else (b, a))
    return out


@dataclasses.dataclass
class RatingsConfig(tfds.core.BuilderConfig):
    root: str = ""
    domain: str = "movies"
    kind: str = "regression"


class SentimentRatings(tfds.core.GeneratorBasedBuilder):
    """Human sentiment ratings of snippets: regression, binary and preference-pair configs (module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums file beside the code (see local_classification)

    @classmethod
    def make_config(cls, path: str | os.PathLike | None = None, *, variant: str = "") -> RatingsConfig:
        if variant not in VARIANTS:
            raise ValueError(f"dataset 'sentiment_ratings/{variant}': expected sentiment_ratings/<domain>_<kind>, "
                             f"domain one of {', '.join((*CORPORA, 'all'))}, kind one of {', '.join(KINDS)} "
                             "(e.g. sentiment_ratings/movies_binary)")
        root = (pathlib.Path(path).expanduser() if path else default_dir()) / "hutto_ICWSM_2014"
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not found; run `jaxlm fetch-ratings` (it downloads the "
                                    f"{PACKAGE} sdist once) or give data.path=DIR holding hutto_ICWSM_2014/")
        domain, kind = variant.rsplit("_", 1)
        domains = list(CORPORA) if domain == "all" else [domain]
        files = [root / f"{CORPORA[d]}_{s}.txt" for d in domains for s in ("GroundTruth", "anonDataRatings")]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: not found; `jaxlm fetch-ratings --out DIR` fetches the ratings")
        name = local_files.config_name(variant, files, version=str(cls.VERSION))
        return RatingsConfig(name=name, root=str(root), domain=domain, kind=kind)

    @functools.cached_property
    def snippets(self) -> list[Snippet]:
        c = self.builder_config
        domains = list(CORPORA) if c.domain == "all" else [c.domain]
        return [s for d in domains for s in read_domain(pathlib.Path(c.root), d)]

    def _info(self) -> tfds.core.DatasetInfo:
        kind = self.builder_config.kind
        text = tfds.features.Text()
        scalar = tfds.features.Scalar(dtype=np.float32)
        if kind == "preferences":
            features = {"domain": text, "chosen": text, "rejected": text, "chosen_id": text, "rejected_id": text,
                        "chosen_rating": scalar, "rejected_rating": scalar, "rating_gap": scalar,
                        "strength": scalar, "margin": scalar}
        else:
            label = scalar if kind == "regression" else tfds.features.ClassLabel(names=["negative", "positive"])
            features = {"id": text, "domain": text, "text": text, "label": label, "rating": scalar,
                        "rating_std": scalar, "ratings": tfds.features.Tensor(shape=(None,), dtype=np.int8)}
        return tfds.core.DatasetInfo(
            builder=self,
            description="Sentiment intensity of snippets rated -4..+4 by about 20 people each "
                        "(Hutto & Gilbert, ICWSM 2014).",
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
            homepage="https://github.com/cjhutto/vaderSentiment",
            citation="Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for Sentiment "
                     "Analysis of Social Media Text. ICWSM-14.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        kind = self.builder_config.kind
        snippets = [s for s in self.snippets if split_of(s) == split]
        if kind == "preferences":
            drawn = [p for d in CORPORA for p in pairs([s for s in snippets if s.domain == d])]
            drawn.sort(key=lambda p: local_files.stable_fraction(f"pair:{p[0].domain}:{p[0].id}:{p[1].id}"))
            for index, (a, b) in enumerate(drawn):
                p = strength(a.ratings, b.ratings)
                yield index, {"domain": a.domain, "chosen": a.text, "rejected": b.text, "chosen_id": a.id,
                              "rejected_id": b.id, "chosen_rating": a.mean, "rejected_rating": b.mean,
                              "rating_gap": a.mean - b.mean, "strength": p,
                              "margin": float(np.log(np.clip(p, 0.01, 0.99) / (1 - np.clip(p, 0.01, 0.99))))}
            return
        if kind == "binary":
            snippets = [s for s in snippets if abs(s.mean) >= NEUTRAL]
        for index, s in enumerate(sorted(snippets, key=_order)):
            label = s.mean if kind == "regression" else int(s.mean > 0)
            yield index, {"id": f"{s.domain}/{s.id}", "domain": s.domain, "text": s.text, "label": label,
                          "rating": s.mean, "rating_std": s.std, "ratings": np.asarray(s.ratings, np.int8)}
