"""The `local_preferences` tfds builder: a user's own preference pairs, in TRL's format, from jsonl files.

`path` is a folder holding `train.jsonl` and optionally `validation.jsonl` (or `dev.jsonl`) and `test.jsonl`, or a
single `.jsonl` file (train only). Each line is a JSON object with `chosen` and `rejected` (strings) and, for an
explicit prompt, `prompt` (every line then has it); an optional number `margin` (how strongly chosen is
preferred, TRL's `margin` column) is kept. Conversational lists of messages are not read: give their text.

Bad input fails before anything is written, naming the file and line: a line that is not a JSON object, a
missing or non-string `chosen` / `rejected`, a pair whose two sides are the same text, `prompt` on some lines
only, an empty file. Examples keep the file's order.
"""

import dataclasses
import functools
import json
import math
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jaxlm.data.builders import local_files

SPLIT_FILES = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}


@dataclasses.dataclass
class LocalPreferencesConfig(tfds.core.BuilderConfig):
    files: tuple[tuple[str, str], ...] = ()  # (split, path)


def split_files(path: str | os.PathLike | None) -> dict[str, pathlib.Path]:
    root = local_files.require_path(path, "local_preferences")
    if root.is_file():
        found = {"train": root}
    elif root.is_dir():
        found = {split: root / f"{stem}.jsonl" for split, stems in SPLIT_FILES.items() for stem in stems
                 if (root / f"{stem}.jsonl").is_file()}
        if "train" not in found:
            raise FileNotFoundError(f"local_preferences: no train.jsonl in {root}")
    else:
        raise FileNotFoundError(f"local_preferences: {root} does not exist")
    for file in found.values():
        if file.suffix != ".jsonl":
            raise ValueError(f"local_preferences: {file} is not a .jsonl file (one JSON object a line)")
    return found


def read_pairs(path: pathlib.Path) -> tuple[bool, bool, list[dict]]:
    """(has prompts, has margins, the pairs) of one file, checked."""
    text, _ = local_files.read_text(path)
    pairs, prompted, margins = [], None, None
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: not a JSON object")
        for field in ("chosen", "rejected") + (("prompt",) if "prompt" in record else ()):
            if field not in record:
                raise ValueError(f"{path}:{number}: no field {field!r}; fields found: {', '.join(record) or 'none'}")
            if not isinstance(record[field], str):
                raise ValueError(f"{path}:{number}: field {field!r} is {type(record[field]).__name__}, expected a "
                                 "string (conversational messages: give their text)")
        if " ".join(record["chosen"].split()) == " ".join(record["rejected"].split()):
            raise ValueError(f"{path}:{number}: chosen and rejected are the same text; a pair needs two")
        if prompted is None:
            prompted, margins = "prompt" in record, "margin" in record
        if ("prompt" in record) != prompted:
            raise ValueError(f"{path}:{number}: {'no' if prompted else 'a'} field 'prompt', unlike the first line "
                             "of the file: every line has a prompt, or none")
        if ("margin" in record) != margins:
            raise ValueError(f"{path}:{number}: {'no' if margins else 'a'} field 'margin', unlike the first line of "
                             "the file: every line has a margin, or none")
        margin = record.get("margin", 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
            raise ValueError(f"{path}:{number}: field 'margin' is {margin!r}, expected a finite number")
        pairs.append(record)
    if not pairs:
        raise ValueError(f"{path}: no preference pairs (the file is empty)")
    return bool(prompted), bool(margins), pairs


class LocalPreferences(tfds.core.GeneratorBasedBuilder):
    """Preference pairs from local jsonl files (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # no checksums file beside the code (see local_classification)

    @classmethod
    def make_config(cls, path: str | os.PathLike | None = None) -> LocalPreferencesConfig:
        found = split_files(path)
        label = found["train"].parent.name if pathlib.Path(path).expanduser().is_dir() else found["train"].stem
        name = local_files.config_name(label, list(found.values()), splits=sorted(found))
        return LocalPreferencesConfig(name=name, files=tuple((s, str(p)) for s, p in found.items()))

    @functools.cached_property
    def tables(self) -> dict[str, tuple[bool, bool, list[dict]]]:
        tables = {split: read_pairs(pathlib.Path(p)) for split, p in self.builder_config.files}
        prompted, margins, _ = tables["train"]
        for split, (p, m, _) in tables.items():
            if (p, m) != (prompted, margins):
                raise ValueError(f"local_preferences: the {split} file {dict(self.builder_config.files)[split]} "
                                 f"{'has' if p else 'lacks'} prompts / margins unlike the train file")
        return tables

    def _info(self) -> tfds.core.DatasetInfo:
        prompted, margins, _ = self.tables["train"]
        features = {"idx": tfds.features.Scalar(dtype=np.int32), "chosen": tfds.features.Text(),
                    "rejected": tfds.features.Text()}
        if prompted:
            features["prompt"] = tfds.features.Text()
        if margins:
            features["margin"] = tfds.features.Scalar(dtype=np.float32)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Preference pairs of {', '.join(p for _, p in self.builder_config.files)}.",
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self.tables}

    def _generate_examples(self, split: str):
        prompted, margins, pairs = self.tables[split]
        for index, record in enumerate(pairs):
            example = {"idx": index, "chosen": record["chosen"], "rejected": record["rejected"]}
            if prompted:
                example["prompt"] = record["prompt"]
            if margins:
                example["margin"] = float(record["margin"])
            yield index, example
