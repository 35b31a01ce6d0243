"""Where a run's files live: a local directory or a Google Cloud Storage bucket (`gs://bucket/run`).

Workdirs, `init_from='jaxlm:...'` and tokenizer directories go through `etils.epath` (as in MaxText and
big_vision), not `pathlib`, which turns `gs://b` into `gs:/b`. orbax writes checkpoints through tensorstore's own
GCS driver; the rest (config.json, run.json, metrics.jsonl, the tokenizer, plots, TensorBoard's events) through
gcsfs; the workdir's lock through google-cloud-storage (generation preconditions). gs:// needs the gcs extra
(`pip install 'jaxlm[gcs]'`; `[tpu]` has it).

    storage.path("gs://bucket/run")    an epath.Path (a local one made absolute: tensorstore needs that)
    storage.write_whole(p, text)       whole or not at all: a local temporary file renamed into place; on GCS a
                                       single object write is atomic already
    storage.Lines(p)                   a file lines are appended to (a GCS object cannot be appended to: rewritten)
    storage.move(source, target)       a directory moved (on GCS: copied whole, then deleted)
    storage.local(p)                   a directory readable with local paths (a remote one downloaded once)
    storage.Mirror(p)                  a local directory (`.local`) uploaded to `p` by `.sync()` when remote
    with storage.staged(p) as d: ...   a directory written locally in `d`, then uploaded to `p` when remote

Tests run a GCS emulator (fake-gcs-server, `STORAGE_EMULATOR_HOST` and `TENSORSTORE_GCS_HTTP_URL`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

from etils import epath

REMOTE = ("gs://",)


def is_remote(p: str | os.PathLike) -> bool:
    return os.fspath(p).startswith(REMOTE)


def path(p: str | os.PathLike) -> epath.Path:
    """`p` as an epath.Path: gs://... as it is (after checking gcsfs is installed), a local path absolute."""
    if is_remote(p):
        try:
            import gcsfs  # noqa: F401 - what epath reads gs:// with
            import google.cloud.storage  # noqa: F401 - the workdir's lease and `move`
        except ImportError:
            raise ImportError(f"{os.fspath(p)}: gs:// paths need gcsfs and google-cloud-storage "
                              "(pip install 'jaxlm[gcs]')") from None
        import fsspec.config

        # gcsfs would cache listings: what orbax, another host or a lock wrote since would go unseen
        fsspec.config.conf.setdefault("gs", {})["use_listings_cache"] = False
        return epath.Path(os.fspath(p))
    return epath.Path(pathlib.Path(p).expanduser().absolute())


def write_whole(p: epath.Path | pathlib.Path, text: str) -> None:
    """Whole or not at all: a kill mid-write leaves the previous file."""
    if is_remote(p):
        p.write_text(text)
        return
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


class Lines:
    """A text file lines are appended to. Locally an open file; on GCS, whose objects are written whole, the
    file is kept in memory (what it held at the start, then each line) and each `write` uploads it whole."""

    def __init__(self, p: epath.Path):
        self.path, self._remote = p, is_remote(p)
        if self._remote:
            self._text = p.read_text() if p.exists() else ""
        else:
            self._file = open(p, "a")

    def write(self, lines: list[str]) -> None:
        if self._remote:
            self._text += "".join(lines)
            self.path.write_text(self._text)
        else:
            self._file.writelines(lines)
            self._file.flush()

    def close(self) -> None:
        if not self._remote:
            self._file.close()


def move(source: epath.Path, target: epath.Path) -> None:
    """A directory moved. A bucket has no folders to rename: every object is copied, and only when all are
    there are the originals deleted (a failure midway leaves the source whole)."""
    if not is_remote(source):
        shutil.move(source, target)
        return
    from google.cloud import storage as gcs

    (bucket_name, prefix), (_, new_prefix) = (bucket_and_name(p) for p in (source, target))
    bucket = gcs.Client().bucket(bucket_name)
    blobs = list(bucket.list_blobs(prefix=prefix.rstrip("/") + "/"))
    for blob in blobs:
        bucket.copy_blob(blob, bucket, new_prefix.rstrip("/") + blob.name[len(prefix.rstrip("/")):])
    for blob in blobs:
        blob.delete()


def bucket_and_name(p: epath.Path) -> tuple[str, str]:
    bucket, _, name = os.fspath(p).removeprefix("gs://").partition("/")
    return bucket, name


def local(p: str | os.PathLike) -> pathlib.Path:
    """A directory as a local path: itself, or (gs://) a copy downloaded into a temporary directory once per
    process (a tokenizer: small, and never rewritten once written)."""
    if not is_remote(p):
        return pathlib.Path(p)
    key = os.fspath(p).rstrip("/")
    if key not in _downloaded:
        source = path(key)
        if not source.is_dir():
            raise FileNotFoundError(f"{key}: no such directory")
        target = pathlib.Path(tempfile.mkdtemp(prefix="jaxlm-")) / source.name
        _copy_tree(source, epath.Path(target))
        _downloaded[key] = target
    return _downloaded[key]


_downloaded: dict[str, pathlib.Path] = {}


class Mirror:
    """A local directory for writers that take only local paths (TensorBoard's, a tokenizer trainer's): `p`
    itself, or for gs:// a temporary directory whose new and changed files `sync` uploads to `p`."""

    def __init__(self, p: epath.Path):
        self.remote = p if is_remote(p) else None
        self.local = pathlib.Path(tempfile.mkdtemp(prefix="jaxlm-")) if self.remote else pathlib.Path(p)
        self._sent: dict[pathlib.Path, tuple[int, int]] = {}

    def sync(self) -> None:
        if self.remote is None:
            return
        for f in sorted(self.local.rglob("*")):
            stat = f.stat()
            if f.is_file() and self._sent.get(f) != (stat.st_size, stat.st_mtime_ns):
                (self.remote / f.relative_to(self.local).as_posix()).write_bytes(f.read_bytes())
                self._sent[f] = (stat.st_size, stat.st_mtime_ns)

    def close(self) -> None:
        """Remove the temporary directory (what `sync` did not upload is lost)."""
        if self.remote is not None:
            shutil.rmtree(self.local, ignore_errors=True)


@contextlib.contextmanager
def staged(p: epath.Path) -> Iterator[pathlib.Path]:
    """A directory to write with local paths, uploaded to `p` at the end when `p` is remote."""
    mirror = Mirror(p)
    try:
        yield mirror.local
        mirror.sync()
    finally:
        mirror.close()


def _copy_tree(source: epath.Path, target: epath.Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_dir():
            _copy_tree(item, target / item.name)
        else:
            (target / item.name).write_bytes(item.read_bytes())
