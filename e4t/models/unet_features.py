"""The UNet's down- and mid-block outputs without hooks: what the encoder reads, in a form
``torch.compile`` traces whole (forward hooks registered per call, and a forward stopped
by an exception, each break a compiled graph).

The same calls, in the same order, as ``UNet2DConditionModel.forward`` (diffusers 0.42) up
to its mid block, for the UNets this project builds: no class labels, attention masks,
ControlNet or adapter residuals. :meth:`E4TModel.unet_block_outputs` takes this path
while compiling; eager it keeps its hooks (the compiled = eager test compares the two).
"""

from __future__ import annotations

from typing import Any

import torch


def down_and_mid_outputs(
    unet: Any,  # a diffusers UNet2DConditionModel
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Each down block's output hidden states, then the mid block's: what forward hooks on
    ``unet.down_blocks`` and ``unet.mid_block`` capture."""
    config: Any = unet.config
    if config.center_input_sample or config.class_embed_type is not None:
        raise ValueError("a UNet with centred inputs or class embeddings is not supported")
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, None)
    aug_emb = unet.get_aug_embed(
        emb=emb,
        encoder_hidden_states=encoder_hidden_states,
        added_cond_kwargs=added_cond_kwargs or {},
    )
    if aug_emb is not None:
        emb = emb + aug_emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    hidden = unet.conv_in(sample)
    outputs = []
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            hidden, _ = block(
                hidden_states=hidden, temb=emb, encoder_hidden_states=encoder_hidden_states
            )
        else:
            hidden, _ = block(hidden_states=hidden, temb=emb)
        outputs.append(hidden)
    mid = unet.mid_block
    if getattr(mid, "has_cross_attention", False):
        outputs.append(mid(hidden, emb, encoder_hidden_states=encoder_hidden_states))
    else:
        outputs.append(mid(hidden, emb))
    return outputs
