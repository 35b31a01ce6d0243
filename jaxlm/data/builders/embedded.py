"""The embedded default data, three tfds builders over the Debian packages `wordnet-base` and `fortunes`.

- `wordnet_lexname`: a synset's gloss (definitions and examples, as WordNet writes them) -> its
  lexicographer category (45 classes, label id = WordNet's file number, e.g. 5 = noun.animal).
- `fortunes_topic`: a fortune -> its file (science, politics, ...), the 17 files with at least 300 fortunes.
- `embedded_corpus`: pretraining documents, one sentence a line: runs of `SYNSETS_PER_DOCUMENT` consecutive
  synsets of one lexicographer file (each "lemmas: definition" then its examples), and one fortune a document.

Both tasks split 80/10/10 into train/validation/test by a stable hash, the same on every machine, of the
synset's definition or of the fortune's text (whitespace collapsed), so that synsets sharing a definition
and fortunes repeated across files fall in one split. The corpus's `train` split holds only synsets and
fortunes whose hash falls in train (every fortune is hashed, in a task class or not), and its `validation`
split those whose hash falls in validation; an example sentence that WordNet repeats in several synsets is
kept only in the earliest of train / validation / test it belongs to. So no task's validation or test
text is pretrained on, and the test texts are in neither corpus split.

Within a split the examples are stored in the order of another stable hash, not in the Debian files' order
(WordNet's data files run through the lexicographer files one after another): a prefix such as
`validation[:2048]` is a sample of the whole split (45 classes), not of WordNet's first four noun files.
"""

import collections
import dataclasses
import functools
import os

import tensorflow_datasets as tfds

from jaxlm.data.builders import debian, local_files
from jaxlm.data.sentences import split_sentences

SYNSETS_PER_DOCUMENT = 8
MIN_FORTUNES_PER_TOPIC = 300
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class DebianConfig(tfds.core.BuilderConfig):
    wordnet_dir: str = str(debian.WORDNET_DIR)
    fortunes_dir: str = str(debian.FORTUNES_DIR)


def make_config(wordnet_dir: os.PathLike = debian.WORDNET_DIR,
                fortunes_dir: os.PathLike = debian.FORTUNES_DIR) -> DebianConfig:
    """The config of the installed packages (named after their files: an update gets a fresh dataset)."""
    files = debian.wordnet_files(wordnet_dir) + debian.fortune_files(fortunes_dir)
    return DebianConfig(name=local_files.config_name("wordnet3_fortunes", files),
                        wordnet_dir=str(wordnet_dir), fortunes_dir=str(fortunes_dir))


def synset_split(synset: debian.Synset) -> str:
    return local_files.split_of(f"wordnet:{synset.definition}")


def fortune_split(fortune: debian.Fortune) -> str:
    return local_files.split_of(f"fortune:{' '.join(fortune.text.split())}")


def shuffled(items: list, key) -> list:
    """`items` in the order of a stable hash of `key(item)` (ties keep their order): any prefix is a sample."""
    return sorted(items, key=lambda item: local_files.stable_fraction(f"order:{key(item)}"))


def topics(fortunes: list[debian.Fortune]) -> list[str]:
    """The fortune files with at least MIN_FORTUNES_PER_TOPIC fortunes, sorted."""
    counts = collections.Counter(f.topic for f in fortunes)
    return sorted(t for t, n in counts.items() if n >= MIN_FORTUNES_PER_TOPIC)


class _DebianBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "Examples in a stable hash order within each split (was: the Debian files' order)."}
    # No checksums file beside the code: skips tfds 4.9.10's code-path lookup, which imports
    # `importlib_resources`, a package tfds only declares for Python < 3.9.
    code_path = None

    @classmethod
    def make_config(cls, path: os.PathLike | None = None, **dirs) -> DebianConfig:
        if path is not None:
            raise ValueError(f"{cls.name} reads the Debian packages' files and takes no `path` (got {path})")
        return make_config(**dirs)

    @functools.cached_property
    def synsets(self) -> list[debian.Synset]:
        return debian.read_wordnet(self.builder_config.wordnet_dir)

    @functools.cached_property
    def fortunes(self) -> list[debian.Fortune]:
        return debian.read_fortunes(self.builder_config.fortunes_dir)

    def _dataset_info(self, description: str, features: dict) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
            homepage="https://wordnet.princeton.edu/",
        )


class WordnetLexname(_DebianBuilder):
    """WordNet gloss -> lexicographer category (noun.animal, verb.motion, ...)."""

    def _info(self) -> tfds.core.DatasetInfo:
        return self._dataset_info(
            "WordNet 3.0 glosses labelled with their synset's lexicographer file.",
            {"id": tfds.features.Text(), "text": tfds.features.Text(),
             "label": tfds.features.ClassLabel(names=debian.LEXNAMES)},
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        synsets = shuffled([s for s in self.synsets if synset_split(s) == split], lambda s: s.key)
        for index, synset in enumerate(synsets):
            yield index, {"id": synset.key, "text": synset.gloss, "label": synset.lexname}


class FortunesTopic(_DebianBuilder):
    """Fortune -> the file it comes from (science, politics, ...)."""

    def _info(self) -> tfds.core.DatasetInfo:
        return self._dataset_info(
            f"Fortunes labelled with their file, for the files with at least {MIN_FORTUNES_PER_TOPIC} fortunes.",
            {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=topics(self.fortunes))},
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        kept = set(topics(self.fortunes))
        fortunes = [f for f in self.fortunes if f.topic in kept and fortune_split(f) == split]
        for index, fortune in enumerate(shuffled(fortunes, lambda f: f"{f.topic}:{f.text}")):
            yield index, {"text": fortune.text, "label": fortune.topic}


def synset_lines(synset: debian.Synset) -> list[str]:
    """'lemma, lemma: definition', then one line per example sentence."""
    return [f"{', '.join(synset.lemmas)}: {synset.definition}", *synset.examples]


class EmbeddedCorpus(_DebianBuilder):
    """Pretraining documents from WordNet and fortunes, none from a task's validation or test split."""

    def _info(self) -> tfds.core.DatasetInfo:
        return self._dataset_info(
            "Documents of WordNet 3.0 glosses and of fortunes, one sentence a line.",
            {"text": tfds.features.Text(), "source": tfds.features.Text()},
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in ("train", "validation")}

    def _documents(self, split: str):
        """(text, source) of the split's documents: WordNet's first, then the fortunes."""
        later = SPLITS[SPLITS.index(split) + 1 :]
        excluded = {e for s in self.synsets if synset_split(s) in later for e in s.examples}
        run: list[debian.Synset] = []
        for synset in self.synsets + [None]:
            if run and (synset is None or synset.lexname != run[0].lexname or len(run) == SYNSETS_PER_DOCUMENT):
                lines = [line for s in run for line in synset_lines(s) if line not in excluded]
                yield "\n".join(lines), f"wordnet/{debian.LEXNAMES[run[0].lexname]}"
                run = []
            if synset is not None and synset_split(synset) == split:
                run.append(synset)
        for fortune in self.fortunes:
            if fortune_split(fortune) == split:
                sentences = split_sentences(" ".join(fortune.text.split()))
                yield "\n".join(sentences), f"fortunes/{fortune.topic}"

    def _generate_examples(self, split: str):
        documents = shuffled(list(self._documents(split)), lambda d: f"{d[1]}:{d[0]}")
        for index, (text, source) in enumerate(documents):
            yield index, {"text": text, "source": source}
