"""The E4T encoder E(x, z_t, t) → a word-embedding offset (E4T §3.1).

Two branches, fused by a small head:

- CLIP image branch: the [CLS] token of every ``clip_layer_stride``-th layer of a CLIP
  vision tower (ViT-H/14: 32 layers → 16 vectors of 1280), each through its own linear
  layer, averaged over the hierarchy, then LeakyReLU. (The community port takes every 2nd
  *patch token* of the last layer instead; that is not the paper.)
- Denoiser branch: the UNet's down-block and mid-block outputs on (z_t, t, empty prompt),
  global-average-pooled per block, concatenated, through a linear layer, then LeakyReLU.

The head maps both to the text encoder's width. The caller forms
``v* = e(class_word) + s · E(...)`` (see :mod:`e4t.models.e4t_model`).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def clip_layer_indices(num_layers: int, stride: int) -> list[int]:
    """Indices into ``hidden_states`` (0 = embeddings) of every ``stride``-th layer's output."""
    return list(range(stride, num_layers + 1, stride))


class E4TEncoder(ModelMixin, ConfigMixin):
    """Trainable encoder head. Inputs are features of frozen towers, so it holds no tower.

    clip_hidden_size/clip_num_layers: the vision tower's width and depth.
    unet_block_channels: channels of each pooled UNet block output (down blocks, then mid).
    embed_dim: the text encoder's token-embedding width.
    """

    @register_to_config
    def __init__(
        self,
        clip_hidden_size: int,
        clip_num_layers: int,
        unet_block_channels: list[int],
        embed_dim: int,
        hidden_dim: int = 768,
        clip_layer_stride: int = 2,
        leaky_relu_slope: float = 0.2,
    ) -> None:
        super().__init__()
        self.layer_indices = clip_layer_indices(clip_num_layers, clip_layer_stride)
        if not self.layer_indices:
            raise ValueError(f"no CLIP layers for stride {clip_layer_stride} of {clip_num_layers}")
        num = len(self.layer_indices)
        # one linear layer per CLIP layer, stored stacked: (L, C, H) and (L, H)
        self.clip_weight = nn.Parameter(torch.empty(num, clip_hidden_size, hidden_dim))
        self.clip_bias = nn.Parameter(torch.zeros(num, hidden_dim))
        nn.init.normal_(self.clip_weight, std=clip_hidden_size**-0.5)
        self.unet_proj = nn.Linear(sum(unet_block_channels), hidden_dim)
        self.act = nn.LeakyReLU(leaky_relu_slope)
        out = nn.Linear(hidden_dim, embed_dim)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim), nn.LeakyReLU(leaky_relu_slope), out
        )
        # zero output at initialisation: v* starts as e(class_word) and, with zero weight
        # offsets, a fresh E4T model is exactly the base model
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)

    def select_cls(
        self, hidden_states: tuple[torch.Tensor, ...] | list[torch.Tensor]
    ) -> torch.Tensor:
        """The [CLS] token of the layers read: hidden states (N+1 of (B, T, C)) → (B, L, C)."""
        return torch.stack([hidden_states[i][:, 0] for i in self.layer_indices], dim=1)

    def clip_features(self, cls: torch.Tensor) -> torch.Tensor:
        """CLIP branch: the selected [CLS] tokens (B, L, C) → (B, H)."""
        per_layer = torch.einsum("blc,lch->blh", cls.to(self.clip_weight.dtype), self.clip_weight)
        return self.act((per_layer + self.clip_bias).mean(dim=1))

    def unet_features(self, block_outputs: list[torch.Tensor]) -> torch.Tensor:
        """Denoiser branch: UNet block outputs [(B, C_i, h_i, w_i)] → (B, H)."""
        pooled = torch.cat([b.mean(dim=(2, 3)) for b in block_outputs], dim=1)
        return self.act(self.unet_proj(pooled.to(self.unet_proj.weight.dtype)))

    def hidden(
        self, clip_features: torch.Tensor, block_outputs: list[torch.Tensor]
    ) -> torch.Tensor:
        """Everything up to the output layer: (B, H) + UNet block outputs → (B, H)."""
        fused = torch.cat([clip_features, self.unet_features(block_outputs)], dim=1)
        return self.head[:-1](fused)

    @property
    def output_layer(self) -> nn.Linear:
        layer = self.head[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(
        self, clip_features: torch.Tensor, block_outputs: list[torch.Tensor]
    ) -> torch.Tensor:
        """E(x, z_t, t): (B, H) CLIP features + UNet block outputs → (B, embed_dim)."""
        return self.output_layer(self.hidden(clip_features, block_outputs))
