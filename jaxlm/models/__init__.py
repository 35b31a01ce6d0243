"""Model families (BERT, GPT) on one Transformer (`jaxlm.models.transformer`); `preset(name)` finds a preset of
either by its name."""

from __future__ import annotations

from jaxlm.models import bert, gpt
from jaxlm.models.transformer import TransformerConfig, from_preset

PRESETS: dict[str, dict] = {**bert.PRESETS, **gpt.PRESETS}


def preset(name: str, **overrides) -> TransformerConfig:
    """The config of a BERT or GPT preset by name, with field overrides."""
    return from_preset(PRESETS, name, overrides)
