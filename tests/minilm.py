"""The real MiniLM checkpoint (a BERT with a WordPiece vocab) for parity and fine-tuning tests.

`minilm_dir()` is `jaxlm.hf.fetch_minilm` into `$JAXLM_CACHE/minilm-l6-v2` (default `<repo>/.cache/minilm-l6-v2`,
gitignored, where experiments/minilm_finetune.py looks for it): downloaded once, then reused.
"""

import os
import pathlib

from jaxlm import hf


def minilm_dir() -> pathlib.Path:
    cache = pathlib.Path(os.environ.get("JAXLM_CACHE", pathlib.Path(__file__).parents[1] / ".cache"))
    return hf.fetch_minilm(cache / "minilm-l6-v2")
