"""An on-disk cache of named numpy arrays, keyed by a hash of what they were built from.

The expensive, deterministic stages of the input pipeline (tokenising a dataset, pairing pretraining
instances) run once per key; later runs, and other processes on the same machine, memory-map the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxlm.data import records


def cache_key(parts: dict) -> str:
    """A stable hash of JSON-serialisable build parameters."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


_PROBE = "Hello, Wörld! ÉCOLE naïve 3.14 日本語 [MASK] x"  # normalisation differences show in its ids


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of a tokenizer's behaviour: its pieces, special ids and the ids of a probe text."""
    h = hashlib.sha256()
    for token_id in range(tokenizer.vocab_size):
        h.update(tokenizer.id_to_piece(token_id).encode() + b"\0")
    h.update(json.dumps(tokenizer.special_ids, sort_keys=True).encode())
    h.update(np.asarray(tokenizer.encode([_PROBE])[0], np.int64).tobytes())
    return h.hexdigest()[:20]


def source_fingerprint(source, fields) -> str:
    """A hash of what identifies a source: its tfds name, config, version and split when it has them, its
    length, and the `fields` of its first and last records."""
    info = getattr(source, "dataset_info", None)
    h = hashlib.sha256(f"{info.full_name if info else ''}:{getattr(source, 'split', '')}:{len(source)}".encode())
    for record in source.__getitems__(sorted({0, len(source) - 1})) if len(source) else []:
        for name in fields:
            h.update(repr(records.field(record, name)).encode())
    return h.hexdigest()[:20]


def cached_arrays(
    cache_dir: str | os.PathLike | None,
    parts: Callable[[], dict],
    build: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """`build()`'s arrays, from `cache_dir/<hash of parts()>/` when present (memory-mapped, read-only).

    parts() gives the JSON-serialisable parameters the arrays are built from (called only with a cache_dir).
    Without a cache_dir the arrays are built in memory. Writes go to a temporary folder renamed into place,
    so concurrent builders (several processes on one machine) never see a half-written cache.
    """
    if cache_dir is None:
        return build()
    key = parts()
    final = Path(cache_dir) / cache_key(key)
    if not final.exists():
        arrays = build()
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, indent=1))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp)
    return {path.stem: np.load(path, mmap_mode="r") for path in sorted(final.glob("*.npy"))}
