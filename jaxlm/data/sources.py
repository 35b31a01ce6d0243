"""Datasets by name: any tensorflow-datasets dataset, or one of jaxlm's own builders, as a random-access source.

`open_source(name, split)` returns a `tfds.data_source`: `len`, `source[i]`, and `source.__getitems__(indices)`
(about 10x faster than one record at a time), each record a dict of numpy values (texts as bytes). tfds
names (`glue/sst2`, `imdb_reviews`, `wikipedia/20230601.en`) go to `tfds.data_source`, which downloads
and prepares the dataset in the array_record format when it is not in `data_dir` yet (that needs the
network). jaxlm's builders (`local_text`, `local_classification`, `local_preferences`, `embedded_corpus`,
`wordnet_lexname`, `fortunes_topic`, `sentiment_ratings/<domain>_<kind>`) are prepared on first use from local
files, then reused while those files are unchanged.
`data_dir` defaults to `$JAXLM_DATA_DIR`, else `~/.cache/jaxlm/tfds`.
"""

import fcntl
import importlib
import inspect
import os
import pathlib
from collections.abc import Sequence

import tensorflow_datasets as tfds

from jaxlm import storage
from jaxlm.data.builders import BUILDERS

__all__ = ["BUILDERS", "default_data_dir", "prepare", "open_source", "class_names"]

# tfds imports these dataset modules lazily, so their datasets (glue, c4, wikipedia, ...) are unknown to
# `tfds.data_source` until they are imported.
_TFDS_GROUPS = (
    "text", "summarization", "question_answering", "translate", "text_simplification", "structured",
    "audio", "graphs", "image", "image_classification", "object_detection", "ranking", "recommendation",
    "time_series", "video", "vision_language",
)


def default_data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("JAXLM_DATA_DIR") or "~/.cache/jaxlm/tfds").expanduser()


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown dataset {name!r}: neither a tensorflow-datasets name (e.g. 'glue/sst2', 'imdb_reviews') nor "
        f"one of jaxlm's builders ({', '.join(BUILDERS)})"
    )


def prepare(
    name: str, *, data_dir: str | os.PathLike | None = None, path: str | os.PathLike | None = None, **builder_kwargs
) -> tfds.core.DatasetBuilder:
    """jaxlm's builder `name` ('NAME' or 'NAME/CONFIG') for `path` and `builder_kwargs`, prepared in `data_dir`
    (once)."""
    base, slash, variant = name.partition("/")
    if base not in BUILDERS:
        raise _unknown(name)
    data_dir = pathlib.Path(data_dir or default_data_dir()).expanduser()
    cls = BUILDERS[base]
    if slash:
        if "variant" not in inspect.signature(cls.make_config).parameters:
            raise ValueError(f"dataset {name!r}: {base} has no named configs; give it as {base!r}")
        builder_kwargs["variant"] = variant
    config = cls.make_config(path, **builder_kwargs)
    prepared = data_dir / cls.name / config.name / str(cls.VERSION)
    if (prepared / "dataset_info.json").is_file():
        return tfds.builder_from_directory(prepared)
    # Processes on one machine (parallel sweep trials, the hosts of a test) prepare it one at a time.
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f".{cls.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (prepared / "dataset_info.json").is_file():  # another process prepared it meanwhile
            return tfds.builder_from_directory(prepared)
        builder = cls(config=config, data_dir=str(data_dir), file_format="array_record")
        builder.download_and_prepare(file_format="array_record")
    return builder


def _tfds_source(name: str, split: str, data_dir: os.PathLike, builder_kwargs: dict):
    def load():
        return tfds.data_source(name, split=split, data_dir=str(data_dir), builder_kwargs=builder_kwargs or None)

    try:
        return load()
    except tfds.core.registered.DatasetNotFoundError:
        pass
    for group in _TFDS_GROUPS:
        try:
            importlib.import_module(f"tensorflow_datasets.{group}")
        except ImportError:  # a group needing an optional package (h5py, ...): not a text dataset
            continue
    try:
        return load()
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown(name) from None


def open_source(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    **builder_kwargs,
) -> Sequence[dict]:
    """The records of `split` (tfds split syntax: 'train', 'train[:1%]', ...) of dataset `name`.

    `path` and `builder_kwargs` configure jaxlm's builders (e.g. `local_classification` with
    `text_field='sentence'`); for a tfds name, `builder_kwargs` go to `tfds.builder` (e.g. `config=...`).
    """
    if name.partition("/")[0] in BUILDERS:
        builder = prepare(name, data_dir=data_dir, path=path, **builder_kwargs)
        if builder.info.splits[split].num_examples == 0:
            raise ValueError(f"dataset {name!r}: the split {split!r} has no examples")
        return builder.as_data_source(split=split)
    if path is not None:
        raise ValueError(f"`path` is for jaxlm's builders (local_text, local_classification, local_preferences, "
                         f"sentiment_ratings), not {name!r}")
    return _tfds_source(name, split, storage.path(data_dir or default_data_dir()), builder_kwargs)  # (gs:// too)


def class_names(source, label_field: str = "label") -> list[str]:
    """The class names of a source's ClassLabel field (their number is the number of classes)."""
    features = source.dataset_info.features
    if label_field not in features:
        raise KeyError(f"no label field {label_field!r} in the dataset; fields: {', '.join(features)}")
    feature = features[label_field]
    if not isinstance(feature, tfds.features.ClassLabel):
        raise ValueError(f"field {label_field!r} is {type(feature).__name__}, not a ClassLabel (a regression target?)")
    return list(feature.names)
