"""The frozen reference of a preference or RL fine-tune: the decoder the policy starts from and is kept near.

    reference_of(config)                 'jaxlm:WORKDIR' or 'hf:DIR': config.task.reference, else model.init_from
    frozen_decoder(config, vocab_size)   (its TransformerConfig, its host parameters)
"""

from __future__ import annotations

import copy


def reference_of(config) -> str:
    reference = config.task.reference or config.model.init_from
    if reference in ("", "none"):
        raise ValueError(f"config.task.reference: task {config.task.name!r} needs a reference model, 'jaxlm:WORKDIR' "
                         "or 'hf:DIR' (by default config.model.init_from, which is 'none')")
    return reference


def frozen_decoder(config, vocab_size: int):
    """The reference's model config and parameters, checked to be a decoder of the policy's vocabulary."""
    from jaxlm.experiment import model_config_from

    reference = reference_of(config)
    config = copy.deepcopy(config)
    config.model.init_from = reference
    try:
        model_config, params = model_config_from(config, vocab_size)
    except ValueError as e:
        raise ValueError(f"config.task.reference={reference}: {e}") from None
    if "gpt" not in (params or {}):
        raise ValueError(f"config.task.reference={reference}: not a decoder (no 'gpt' parameters); the reference is "
                         "the policy's starting point, a causal_lm or sft workdir")
    return model_config, params
