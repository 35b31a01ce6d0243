"""Reading the records of a random-access source (a `tfds.data_source` or one of jaxlm's builders) in chunks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CHUNK = 1024  # records per batched read: `__getitems__` is ~10x faster than one record at a time


def iter_records(source, chunk_size: int = CHUNK) -> Iterator[dict]:
    """Every record of `source` in order, read `chunk_size` at a time with `__getitems__`."""
    for start in range(0, len(source), chunk_size):
        yield from source.__getitems__(list(range(start, min(start + chunk_size, len(source)))))


def as_text(value) -> str:
    """A text feature as str: tfds gives bytes (invalid UTF-8 is replaced, never an error)."""
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def field(record: dict, name: str):
    """record[name], or an error naming the fields the record has."""
    try:
        return record[name]
    except KeyError:
        raise KeyError(f"no field {name!r} in the dataset's records; fields: {sorted(record)}") from None
