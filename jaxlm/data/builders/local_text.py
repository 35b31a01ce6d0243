"""The `local_text` tfds builder: a pretraining corpus from local UTF-8 `.txt` files.

`path` is a folder (every `*.txt` below it) or a glob. Documents are separated by blank lines and hold a
sentence or a paragraph per line. Each example is one document: `text` (its lines joined by '\n') and
`source` (its file, relative to the folder or the glob's fixed part). With `validation_fraction > 0` the
documents whose text hashes below that fraction form a `validation` split (the same on every machine).
Examples keep the files' order (sorted paths) and the documents' order within a file.
"""

import dataclasses
import glob
import os
import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from jaxlm.data.builders import local_files


@dataclasses.dataclass
class LocalTextConfig(tfds.core.BuilderConfig):
    files: tuple[str, ...] = ()
    root: str = ""
    validation_fraction: float = 0.0


def documents(text: str) -> Iterator[str]:
    """The blank-line separated documents of `text`, each as its non-blank lines joined by '\n'."""
    lines: list[str] = []
    for line in text.splitlines():
        line = line.rstrip()
        if line.strip():
            lines.append(line)
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


class LocalText(tfds.core.GeneratorBasedBuilder):
    """Documents from local text files (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file beside the code: skips tfds 4.9.10's code-path lookup, which imports
    # `importlib_resources`, a package tfds only declares for Python < 3.9.
    code_path = None

    @classmethod
    def make_config(cls, path: str | os.PathLike | None, validation_fraction: float = 0.0) -> LocalTextConfig:
        pattern = local_files.require_path(path, "local_text")
        if pattern.is_dir():
            root, files = pattern, sorted(p for p in pattern.rglob("*.txt") if p.is_file())
        else:
            files = sorted(pathlib.Path(p) for p in glob.glob(str(pattern), recursive=True))
            files = [p for p in files if p.is_file()]
            root = pathlib.Path(os.path.commonpath([str(p.parent) for p in files])) if files else pattern.parent
        if not files:
            raise FileNotFoundError(f"local_text: no .txt files at {pattern}")
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"local_text: validation_fraction must be in [0, 1), got {validation_fraction}")
        name = local_files.config_name(root.name, files, validation_fraction=validation_fraction)
        return LocalTextConfig(
            name=name, files=tuple(str(p) for p in files), root=str(root), validation_fraction=validation_fraction
        )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Documents of the text files under {self.builder_config.root}.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "source": tfds.features.Text()}),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        splits = {"train": self._generate_examples("train")}
        if self.builder_config.validation_fraction > 0:
            splits["validation"] = self._generate_examples("validation")
        return splits

    def _generate_examples(self, split: str):
        config = self.builder_config
        total, non_utf8 = 0, {}
        for name in config.files:
            path = pathlib.Path(name)
            text, bad_lines = local_files.read_text(path)
            relative = str(path.relative_to(config.root))
            if bad_lines:
                non_utf8[relative] = bad_lines
            for document in documents(text):
                held_out = local_files.stable_fraction(document) < config.validation_fraction
                if held_out == (split == "validation"):
                    yield total, {"text": document, "source": relative}
                    total += 1
        if not total and split == "train":
            raise ValueError(f"local_text: no documents in the {len(config.files)} file(s) at {config.root}")
        self.info.metadata["non_utf8_lines"] = non_utf8
