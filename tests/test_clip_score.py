"""CLIP-T / CLIP-I / diversity: known answers of the computation with a real CLIPModel."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from e4t.config import ClipScoreConfig
from e4t.evaluation.clip_score import ClipScorer, diversity


@pytest.fixture(scope="module")
def scorer() -> ClipScorer:
    return ClipScorer(ClipScoreConfig(model="tiny"))


def test_clip_t_is_clipscore_of_the_models_own_logits(scorer: ClipScorer, photos_dir: Path) -> None:
    images = [Image.open(photos_dir / n).convert("RGB") for n in ("obama.jpg", "coffee.png")]
    texts = ["a photo of a person", "a cup of coffee on a table"]
    scores = scorer.clip_t(images, texts)
    # the reference path: CLIPModel's forward, logits_per_image = exp(logit_scale) · cos
    inputs = scorer.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
    pixels = scorer.processor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        out = scorer.model(input_ids=inputs.input_ids, pixel_values=pixels)
    cos = out.logits_per_image / scorer.model.logit_scale.exp()
    for i in range(2):
        assert scores[i] == pytest.approx(100 * max(float(cos[i, i]), 0.0), abs=1e-3)


def test_clip_t_matching_caption_wins_when_embeddings_agree(scorer: ClipScorer) -> None:
    """A constructed case: point the text projection at the image embedding of one image,
    so that caption must score higher on that image than a caption projected elsewhere."""
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    target = scorer.image_embeds([image])[0]
    texts = ["a red square", "a blue circle"]
    proj = scorer.model.text_projection
    with torch.no_grad():
        ids = scorer.tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")
        pooled = scorer.model.text_model(**ids).pooler_output  # (2, H)
        # least-squares projection W with W·pooled[0] = target and W·pooled[1] = −target
        want = torch.stack([target, -target])
        weight = torch.linalg.lstsq(pooled, want).solution.T
        saved = proj.weight.detach().clone()
        proj.weight.copy_(weight)
    try:
        match, wrong = scorer.clip_t([image, image], texts)
    finally:
        with torch.no_grad():
            proj.weight.copy_(saved)
    assert match > 99.0 and wrong == 0.0


def test_clip_i_and_diversity_known_answers(scorer: ClipScorer, photos_dir: Path) -> None:
    image = Image.open(photos_dir / "obama.jpg")
    assert scorer.clip_i([image], image)[0] == pytest.approx(1.0, abs=1e-5)
    eye = torch.eye(3)
    assert diversity(eye) == pytest.approx(1.0)  # orthogonal: 1 − 0
    assert diversity(torch.stack([eye[0], eye[0]])) == pytest.approx(0.0)
    assert math.isnan(diversity(eye[:1]))
    with pytest.raises(ValueError, match="captions"):
        scorer.clip_t([image], ["a", "b"])
