"""CLIP scores from a transformers ``CLIPModel``: CLIP-T (text–image), CLIP-I (image–image)
and diversity across seeds.

CLIP-T follows the usual CLIPScore convention: ``100 · max(cos(text, image), 0)``; CLIP-I
is the plain cosine of image embeddings, diversity the mean pairwise ``1 − cos`` of the
images of one prompt across seeds. ``model: tiny`` builds a seeded random tiny CLIP with the
real CLIP vocabulary: it runs the same code offline (tests, demo), its numbers mean nothing.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from e4t.config import ClipScoreConfig

TINY_SEED = 1234


def _tiny_clip() -> tuple[CLIPModel, CLIPTokenizer, CLIPImageProcessorPil]:
    from transformers import CLIPConfig

    from e4t.models.tokenizer import MODEL_MAX_LENGTH, write_clip_tokenizer

    config = CLIPConfig(
        text_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=32,
    )
    with torch.random.fork_rng():
        torch.manual_seed(TINY_SEED)
        model = CLIPModel(config)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(
            write_clip_tokenizer(tmp), model_max_length=MODEL_MAX_LENGTH
        )
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return model, tokenizer, processor


class ClipScorer:
    def __init__(self, config: ClipScoreConfig) -> None:
        if config.model == "tiny":
            model, self.tokenizer, self.processor = _tiny_clip()
        else:
            model = CLIPModel.from_pretrained(config.model, use_safetensors=True)
            self.tokenizer = CLIPTokenizer.from_pretrained(config.model)
            self.processor = CLIPImageProcessorPil.from_pretrained(config.model)
        self.model = model.eval().requires_grad_(False).to(config.device)
        self.device = config.device
        self.name = config.model

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(
            list(texts), padding="max_length", truncation=True, return_tensors="pt"
        ).to(self.device)
        out = self.model.get_text_features(**ids)
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    @torch.no_grad()
    def image_embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(
            images=[i.convert("RGB") for i in images], return_tensors="pt"
        ).pixel_values.to(self.device)
        out = self.model.get_image_features(pixel_values=pixels)
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    def clip_t(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """CLIPScore of each image with its caption: 100 · max(cos, 0)."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} captions")
        return clipscore(self.image_embeds(images), self.text_embeds(texts))

    def clip_i(self, images: Sequence[Image.Image], reference: Image.Image) -> list[float]:
        """Cosine of each image's embedding with the reference image's."""
        return cosines(self.image_embeds(images), self.image_embeds([reference])[0])


def clipscore(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> list[float]:
    """100 · max(cos, 0) of paired unit embeddings (N, D) × (N, D)."""
    cos = (image_embeds * text_embeds).sum(dim=-1)
    return (100.0 * cos.clamp_min(0.0)).tolist()


def cosines(embeds: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """Cosine of each unit embedding (N, D) with one unit embedding (D,)."""
    return (embeds @ reference).tolist()


def diversity(embeds: torch.Tensor) -> float:
    """Mean pairwise 1 − cos of unit embeddings (N, D); NaN for fewer than two."""
    if embeds.shape[0] < 2:
        return float("nan")
    pairs = itertools.combinations(range(embeds.shape[0]), 2)
    return float(np.mean([1.0 - float(embeds[i] @ embeds[j]) for i, j in pairs]))
