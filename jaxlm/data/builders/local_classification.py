"""The `local_classification` tfds builder: a text (or text pair) classification task from local files.

`path` is a folder holding one file per split, `train`, `validation` (or `dev`) and optionally `test`, each
`.csv`, `.tsv` (tab separated, no quoting, as GLUE ships them) or `.jsonl`; or a single file (train only);
or `files={'train': ..., 'validation': ...}`. Columns: `text`, optional `text_b`, `label` (other names with
`text_field`, `text_b_field`, `label_field`). The label names are the train split's labels, sorted
(numerically when all are integers); the test split may lack labels (-1). With `regression=True` the label
is a float. Bad input fails before anything is written, naming the file and line: an empty file, a missing
column (listing the columns found), a validation label never seen in train. Bytes that are not UTF-8 are
replaced and counted. Examples keep the file's row order; `idx` is the row's index in its split.
"""

import csv
import dataclasses
import functools
import io
import json
import math
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jaxlm.data.builders import local_files

SPLIT_FILES = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
FORMATS = (".csv", ".tsv", ".jsonl")


@dataclasses.dataclass
class LocalClassificationConfig(tfds.core.BuilderConfig):
    files: tuple[tuple[str, str], ...] = ()  # (split, path)
    text_field: str = "text"
    text_b_field: str = "text_b"
    label_field: str = "label"
    regression: bool = False


@dataclasses.dataclass(frozen=True)
class Table:
    """The rows of one split's file: (line number, text, text_b or None, label or None)."""

    path: pathlib.Path
    columns: tuple[str, ...]
    rows: tuple[tuple[int, str, str | None, str | None], ...]
    non_utf8_lines: int


def _records(path: pathlib.Path) -> tuple[list[str], list[tuple[int, dict]], int]:
    """(columns, [(line, record)], lines that were not UTF-8) of a csv, tsv or jsonl file."""
    text, bad_lines = local_files.read_text(path)
    if not text.strip():
        raise ValueError(f"{path} is empty")
    if path.suffix == ".jsonl":
        records, columns = [], None
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON object ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: not a JSON object")
            columns = columns or list(record)
            records.append((number, record))
        return columns, records, bad_lines
    if path.suffix == ".tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    columns = next(reader)
    records, line = [], reader.line_num
    for values in reader:
        start, line = line + 1, reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(columns):
            raise ValueError(f"{path}:{start}: {len(values)} fields, the header has {len(columns)} ({columns})")
        records.append((start, dict(zip(columns, values))))
    return columns, records, bad_lines


def _label_text(value) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def read_table(path: pathlib.Path, config: LocalClassificationConfig, *, with_text_b: bool | None, labels: str) -> Table:
    """Reads and checks one split's file. `labels`: 'required' or 'optional' (test); `with_text_b` None:
    read text_b when the file has that column."""
    columns, records, bad_lines = _records(path)
    if not records:
        raise ValueError(f"{path} has a header but no rows")
    if with_text_b is None:
        with_text_b = config.text_b_field in columns
    wanted = [config.text_field] + ([config.text_b_field] if with_text_b else [])
    if labels == "required":
        wanted.append(config.label_field)
    for field in wanted:
        if field not in columns:
            raise ValueError(f"{path}: no column {field!r}; columns found: {', '.join(map(str, columns))}")
    rows = []
    for line, record in records:
        for field in wanted:
            if field not in record:
                raise ValueError(f"{path}:{line}: no field {field!r}; fields found: {', '.join(record)}")
        label = _label_text(record.get(config.label_field))
        if label is None and labels == "required":
            raise ValueError(f"{path}:{line}: empty label in column {config.label_field!r}")
        text_b = str(record[config.text_b_field]) if with_text_b else None
        rows.append((line, str(record[config.text_field]), text_b, label))
    return Table(path, tuple(columns), tuple(rows), bad_lines)


def label_names(train: Table) -> list[str]:
    """The train split's distinct labels, sorted (as numbers when all are integers)."""
    names = {label for _, _, _, label in train.rows}
    if all(name.lstrip("-").isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _refuse_fractions(train: Table) -> None:
    """Labels that are numbers with fractions (0.5, 1.7) are a regression target, not class names."""
    try:
        values = [(line, label, float(label)) for line, _, _, label in train.rows]
    except ValueError:
        return  # class names
    for line, label, value in values:
        if math.isfinite(value) and value != round(value):
            raise ValueError(f"{train.path}:{line}: label {label!r} is a number with a fraction, not a class; for a "
                             "regression on these numbers use --config.task.num_labels=1")


def split_files(path: str | os.PathLike | None, files: dict[str, str] | None) -> dict[str, pathlib.Path]:
    """{split: file} from a folder, a single file, or an explicit mapping."""
    if files:
        unknown = set(files) - set(SPLIT_FILES)
        if unknown:
            raise ValueError(f"local_classification: unknown split(s) {sorted(unknown)}; use {list(SPLIT_FILES)}")
        found = {split: pathlib.Path(p).expanduser() for split, p in files.items()}
    else:
        root = local_files.require_path(path, "local_classification")
        if root.is_file():
            found = {"train": root}
        else:
            found = {}
            for split, stems in SPLIT_FILES.items():
                candidates = [root / f"{stem}{ext}" for stem in stems for ext in FORMATS]
                present = [p for p in candidates if p.is_file()]
                if len(present) > 1:
                    raise ValueError(f"local_classification: several {split} files in {root}: {present}")
                if present:
                    found[split] = present[0]
            if "train" not in found:
                names = ", ".join(f"train{ext}" for ext in FORMATS[:-1]) + f" or train{FORMATS[-1]}"
                raise FileNotFoundError(f"local_classification: no {names} in {root}")
    for split, file in found.items():
        if not file.is_file():
            raise FileNotFoundError(f"local_classification: the {split} file {file} does not exist")
        if file.suffix not in FORMATS:
            raise ValueError(f"local_classification: {file} is not one of {FORMATS}")
    if "train" not in found:
        raise ValueError("local_classification: a train file is needed (the label names come from it)")
    return found


class LocalClassification(tfds.core.GeneratorBasedBuilder):
    """Classification examples from local files (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file beside the code: skips tfds 4.9.10's code-path lookup, which imports
    # `importlib_resources`, a package tfds only declares for Python < 3.9.
    code_path = None

    @classmethod
    def make_config(
        cls,
        path: str | os.PathLike | None = None,
        *,
        files: dict[str, str] | None = None,
        text_field: str = "text",
        text_b_field: str = "text_b",
        label_field: str = "label",
        regression: bool = False,
    ) -> LocalClassificationConfig:
        found = split_files(path, files)
        options = dict(text_field=text_field, text_b_field=text_b_field, label_field=label_field,
                       regression=regression)
        label = found["train"].parent.name if path is None or pathlib.Path(path).is_dir() else found["train"].stem
        name = local_files.config_name(label, list(found.values()), splits=sorted(found), **options)
        return LocalClassificationConfig(name=name, files=tuple((s, str(p)) for s, p in found.items()), **options)

    @functools.cached_property
    def tables(self) -> dict[str, Table]:
        """Every split's rows, read and checked (labels against the train split's)."""
        config = self.builder_config
        files = {split: pathlib.Path(p) for split, p in config.files}
        train = read_table(files["train"], config, with_text_b=None, labels="required")
        with_text_b = train.rows[0][2] is not None
        tables = {"train": train}
        for split, file in files.items():
            if split != "train":
                labels = "optional" if split == "test" else "required"
                tables[split] = read_table(file, config, with_text_b=with_text_b, labels=labels)
        if config.regression:
            for table in tables.values():
                for line, _, _, label in table.rows:
                    try:
                        float("nan" if label is None else label)
                    except ValueError:
                        raise ValueError(f"{table.path}:{line}: label {label!r} is not a number") from None
        else:
            _refuse_fractions(tables["train"])
            names = set(label_names(tables["train"]))
            for split, table in tables.items():
                for line, _, _, label in table.rows:
                    if label is not None and label not in names:
                        raise ValueError(
                            f"{table.path}:{line}: label {label!r} never appears in the train split "
                            f"({files['train']}); train labels: {', '.join(label_names(tables['train']))}"
                        )
        return tables

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        train = self.tables["train"]
        if config.regression:
            label = tfds.features.Scalar(dtype=np.float32)
        else:
            label = tfds.features.ClassLabel(names=label_names(train))
        features = {"idx": tfds.features.Scalar(dtype=np.int32), "text": tfds.features.Text(), "label": label}
        if train.rows[0][2] is not None:
            features["text_b"] = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Classification examples of {', '.join(p for _, p in config.files)}.",
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        self.info.metadata["non_utf8_lines"] = {
            str(t.path): t.non_utf8_lines for t in self.tables.values() if t.non_utf8_lines
        }
        return {split: self._generate_examples(table) for split, table in self.tables.items()}

    def _generate_examples(self, table: Table):
        regression = self.builder_config.regression
        for index, (_, text, text_b, label) in enumerate(table.rows):
            if regression:
                value = float("nan" if label is None else label)
            else:
                value = -1 if label is None else label
            example = {"idx": index, "text": text, "label": value}
            if text_b is not None:
                example["text_b"] = text_b
            yield index, example
