"""Reading the local files jaxlm's builders are made from: lenient UTF-8, stable split hashes, config names.

A file's bytes that are not UTF-8 are replaced by U+FFFD and the lines holding them are counted and logged,
never an error. A builder's config is named after its input (`config_name`): the files' paths, sizes and
modification times and the builder options, so an edited file gets a fresh prepared dataset, never a stale one.
"""

import hashlib
import json
import logging
import os
import pathlib
import re
from collections.abc import Sequence

log = logging.getLogger(__name__)


def read_text(path: pathlib.Path) -> tuple[str, int]:
    """The text of `path` (a leading BOM dropped) and the number of lines with bytes that are not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig"), 0
    except UnicodeDecodeError:
        pass
    lines = data.split(b"\n")
    bad = []
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            bad.append(number)
    log.warning(
        "%s: %d line(s) hold bytes that are not UTF-8 (first: line %d); replaced with U+FFFD",
        path, len(bad), bad[0],
    )
    return data.decode("utf-8-sig", errors="replace"), len(bad)


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone (the same on every machine and Python run)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(key: str, validation: float = 0.1, test: float = 0.1) -> str:
    """'train', 'validation' or 'test' for `key`, by its stable hash."""
    fraction = stable_fraction(key)
    if fraction < 1.0 - validation - test:
        return "train"
    return "validation" if fraction < 1.0 - test else "test"


def config_name(label: str, paths: Sequence[pathlib.Path], **options) -> str:
    """`<label>-<hash>`: the hash of the files' paths, sizes and mtimes and of `options`."""
    h = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    for path in sorted(paths):
        stat = path.stat()
        h.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    slug = re.sub(r"[^a-z0-9_]+", "_", label.lower()).strip("_")[:40] or "data"
    return f"{slug}-{h.hexdigest()[:12]}"


def require_path(path: str | os.PathLike | None, builder: str) -> pathlib.Path:
    if path is None:
        raise ValueError(f"{builder} needs `path` (the files to read), got none")
    return pathlib.Path(path).expanduser()
