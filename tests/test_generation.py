"""Batched generation: K concepts in one sampling loop give each concept's own images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from e4t.config import ModelConfig
from e4t.generation import GenerationConfig, generate
from e4t.models.concept import ConceptBank
from e4t.models.e4t_model import E4TModel


def _model(base: Path) -> E4TModel:
    model = E4TModel.from_config(
        ModelConfig.model_validate({"base_model": str(base), "encoder": {"hidden_dim": 32}})
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a 'trained' domain model: nonzero offsets and encoder output
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _two_concepts(model: E4TModel) -> ConceptBank:
    """Two distinct concepts: their own [CLS] tokens, word corrections, heads and deltas."""
    gen = torch.Generator().manual_seed(2)
    size = model.image_encoder.config.image_size
    bank = model.new_concepts(model.clip_cls(torch.randn(2, 3, size, size, generator=gen)))
    with torch.no_grad():
        for name, p in bank.named_parameters():
            if name != "cls":
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return bank


def _pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(i, dtype=np.int16) for i in images]


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["ddim", "euler-a"])
def test_two_concepts_in_one_call_equal_each_concept_alone(tiny_dir: Path, scheduler: str) -> None:
    model = _model(tiny_dir)
    bank = _two_concepts(model)
    config = GenerationConfig(num_steps=3, batch_size=4, scheduler=scheduler)
    prompts = ["a photo of {}", "{} smiling"]
    try:
        model.attach_concepts(bank)
        together = generate(model, bank.cls, prompts, 2, 5, config, keep_v_star=True)
        alone = []
        for k in range(2):
            one = model.attach_concepts(bank.subset(k))
            alone += generate(model, one.cls, prompts, 2, 5, config, keep_v_star=True)
    finally:
        model.detach_concepts()
    assert [(i.concept_index, i.prompt, i.seed) for i in together] == [
        (k, p, s) for k in range(2) for p in prompts for s in (5, 6)
    ]
    assert [(i.prompt, i.seed) for i in together] == [(i.prompt, i.seed) for i in alone]
    for a, b in zip(together, alone, strict=True):
        assert len(a.v_star_history) == 3
        for va, vb in zip(a.v_star_history, b.v_star_history, strict=True):
            torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)
    batched, single = _pixels([i.image for i in together]), _pixels([i.image for i in alone])
    assert max(int(np.abs(a - b).max()) for a, b in zip(batched, single, strict=True)) <= 1
    # the concepts really differ: concept 0's image j is not concept 1's
    assert np.abs(batched[0] - batched[4]).mean() > 1


def test_generate_refuses_cls_of_another_number_of_concepts(tiny_dir: Path) -> None:
    model = _model(tiny_dir)
    bank = _two_concepts(model)
    model.attach_concepts(bank)
    try:
        with pytest.raises(ValueError, match=r"1 concept.*2 are attached"):
            generate(model, bank.cls[:1], ["{}"], 1, 0, GenerationConfig(num_steps=2))
    finally:
        model.detach_concepts()


@pytest.mark.slow
def test_generate_command_takes_several_concepts(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from e4t.cli import main

    model = _model(tiny_dir)
    model.save_pretrained(tmp_path / "model")
    bank = _two_concepts(model)
    concepts = []
    for k, concept_id in enumerate(["ada", "../bob"]):  # an id is data, not a path
        folder = tmp_path / "concepts" / f"c{k}"
        bank.save(k, folder, model.concept_meta({"concept_id": concept_id}))
        concepts += ["--concept", str(folder)]
    out = tmp_path / "images"
    argv = ["generate", "--model", str(tmp_path / "model"), *concepts, "--prompt", "{}",
            "-n", "2", "--sample-steps", "2", "--batch-size", "4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == [f"{d}/{n:03d}-S-seed{n}.png" for d in ("ada", "bob") for n in (0, 1)]
    chunks = Image.open(out / "bob" / "000-S-seed0.png").text
    assert chunks["e4t.concept_id"] == "../bob"
    assert chunks["e4t.concept_uri"] == str(tmp_path / "concepts" / "c1")


def test_png_text_chunks_hold_no_nul_from_an_untrusted_prompt(tmp_path: Path) -> None:
    """A NUL in a concepts.csv prompt is written escaped: a PNG text chunk may hold none."""
    from PIL import Image

    from e4t.generation import GeneratedImage, save_images

    image = GeneratedImage(Image.new("RGB", (8, 8)), "a photo of {}\x00 evil", 3)
    (path,) = save_images([image], tmp_path, origin={"concept_id": "c\x001"})
    raw = path.read_bytes()
    assert b"\x00 evil" not in raw and b"c\x001" not in raw
    text = Image.open(path).text
    assert text["prompt"] == "a photo of {}\\x00 evil" and text["e4t.concept_id"] == "c\\x001"
