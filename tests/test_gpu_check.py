"""The GPU check script runs anywhere: here on the CPU with the tiny architecture."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_prints_one_json_line_per_figure() -> None:
    env = {
        **os.environ,
        "ARCH": "tiny",
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "RES": "32",
        "STEPS": "1",
        "SKIP": "generate",  # the generation figure's code path is the tested generate()
        "E2E": "0",  # the end-to-end part has its own test below
    }
    done = subprocess.run(
        ["bash", "infra/gpu-check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = [json.loads(line) for line in done.stdout.splitlines()]
    names = [f["figure"] for f in figures]
    assert names == [
        "tune_seconds_per_concept",
        "tune_peak_memory",
        "tune_seconds_per_concept",
        "tune_seconds_per_concept_best_k",
        "tune_step_ops",
        "pretrain_step_flops",
        "pretrain_samples_per_second",
        "pretrain_samples_per_second",
    ]
    assert all(f["value"] > 0 and f["arch"] == "tiny" and f["device"] == "cpu" for f in figures)
    # eager off a GPU unless COMPILE says otherwise: no compile seconds
    assert all(f["compile"] == "off" and "compile_s" not in f for f in figures)
    assert [f["draws"] for f in figures if f["figure"] == "tune_seconds_per_concept"] == [16, 4]
    rates = [f for f in figures if f["figure"] == "pretrain_samples_per_second"]
    assert {f["gradient_checkpointing"] for f in rates} == {
        False,
        True,
    }


@pytest.mark.slow
def test_compiled_gpu_figures_give_their_compile_seconds_apart() -> None:
    """With ``compile`` on (a GPU's default), tuning runs the compiled step and sampling the
    compiled UNet (traced by ``aot_eager`` here: inductor's code generation is the slow
    test of test_compile), and each timed figure gives its compilation apart."""
    from e4t.bench.gpu import bench_gpu
    from e4t.training import compile as compiling
    from e4t.training.tune import step_objective

    compiling.clear_compiled()
    try:
        figures = list(
            bench_gpu(
                "tiny", "cpu", "fp32", 32, tune_steps=1, best_k=(), compile="default",
                compile_backend="aot_eager", draws=(2, 1), skip=("ops", "pretrain"),
                generation_steps=2,
            )
        )  # fmt: skip
        # the step that ran was the compiled one (the sampling UNet's: tests/test_compile)
        assert (step_objective, "default", "aot_eager", "cpu") in compiling._COMPILED
    finally:
        compiling.clear_compiled()
    timed = [f for f in figures if f["figure"] in TIMED]
    assert [(f["figure"], f.get("draws")) for f in timed] == [
        ("tune_seconds_per_concept", 2),
        ("tune_seconds_per_concept", 1),
        ("generate_seconds_per_image", None),
    ]
    assert all(f["compile"] == "default" and f["compile_s"] >= 0 for f in timed)


TIMED = ("tune_seconds_per_concept", "generate_seconds_per_image")


@pytest.mark.slow
def test_gpu_check_dry_run_runs_the_whole_dag(photos_dir: Path, tmp_path: Path) -> None:
    """The end-to-end part on the CPU: curate → pretrain (torchrun) → personalize → evaluate,
    each a CLI subprocess; every stage's line says ok and its artifacts are there."""
    work = tmp_path / "e2e"
    env = {
        **os.environ,
        "ARCH": "tiny",
        "DEVICE": "cpu",
        "DTYPE": "fp32",
        "RES": "64",
        "STEPS": "2",
        "BENCH": "0",
        "PHOTOS": str(photos_dir),
        "E2E_PRETRAIN_STEPS": "2",
        "E2E_DRAWS": "2",
        "E2E_DIR": str(work),
    }
    done = subprocess.run(
        ["bash", "infra/gpu-check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    stages = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, (done.stdout, done.stderr[-3000:])
    assert [s["stage"] for s in stages] == ["curate", "pretrain", "personalize", "evaluate"]
    assert all(s["status"] == "ok" and s["wall_s"] > 0 for s in stages), stages
    assert all(s["device"] == "cpu" and s["arch"] == "tiny" for s in stages)
    assert (work / "shards" / "stats.json").exists()
    model = json.loads((work / "pretrain" / "model" / "e4t_config.json").read_text())
    assert model  # the domain model the later stages loaded
    concepts = sorted((work / "concepts" / "concepts").iterdir())
    assert len(concepts) == 2 and all((c / "concept.safetensors").exists() for c in concepts)
    assert stages[2]["detail"] == "2 of 2 concepts done"
    results = json.loads((work / "evaluation" / "results.json").read_text())
    assert results["config"]["steps"] == [0, 2]
    assert (work / "evaluation" / "report.html").stat().st_size > 0


def test_crops_become_shards_that_pretraining_reads(tmp_path: Path) -> None:
    """Without face models the end-to-end run skips curation: aligned crops (+ masks) are
    written as one shard + stats.json, the layout the training loader lists and decodes."""
    from PIL import Image

    from e4t.bench.e2e import write_crop_shards
    from e4t.data.loader import dataset_identity, shard_urls
    from e4t.data.shards import read_shard

    crops = tmp_path / "crops"
    crops.mkdir()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(crops / "ada.png")
    Image.new("L", (32, 32), 0).save(crops / "ada.mask.png")
    Image.new("RGB", (64, 64), (90, 60, 40)).save(crops / "bo b.jpg")
    stats = write_crop_shards(crops, tmp_path / "shards")
    assert stats["num_samples"] == 2
    urls = shard_urls(str(tmp_path / "shards"))
    samples = list(read_shard(urls[0]))
    assert [s["__key__"] for s in samples] == ["ada", "bo_b"]
    masks = [Image.open(io.BytesIO(s["mask.png"])) for s in samples]
    assert [m.size for m in masks] == [(64, 64), (64, 64)]  # resized to its crop
    assert masks[0].getextrema() == (0, 0) and masks[1].getextrema() == (255, 255)
    assert Image.open(io.BytesIO(samples[0]["jpg"])).format == "JPEG"
    assert dataset_identity(str(tmp_path / "shards"))["num_samples"] == "2"


def test_e2e_stages_after_a_missing_input_are_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine without the face models cannot curate: curation says so, and the stages
    that need its shards say which stage did not finish (nothing runs, nothing fails)."""
    from e4t.bench import e2e

    photos = tmp_path / "photos"
    photos.mkdir()
    monkeypatch.setattr(e2e, "face_models_available", lambda: False)
    settings = e2e.E2ESettings(work_dir=tmp_path / "w", arch="tiny", photos_dir=photos)
    results = list(e2e.run_e2e(settings))
    assert [(r.stage, r.status) for r in results] == [
        ("curate", "skipped"), ("pretrain", "skipped"), ("personalize", "skipped"),
        ("evaluate", "skipped"),
    ]  # fmt: skip
    assert results[0].detail == e2e.NO_FACE_MODELS
    assert {r.detail for r in results[1:]} == {"curate did not finish"}
    line = json.loads(results[1].to_json())
    assert line["device"] == "cuda" and line["arch"] == "tiny" and line["wall_s"] == 0.0

    # crops that are not there: the shard stage fails, and the exit status says so
    empty = tmp_path / "empty"
    empty.mkdir()
    settings = e2e.E2ESettings(work_dir=tmp_path / "w2", faces_dir=empty)
    results = list(e2e.run_e2e(settings))
    assert [r.status for r in results] == ["failed", "skipped", "skipped", "skipped"]
    assert "no aligned face crops" in (results[0].detail or "")
    assert e2e.print_stages(iter(results)) == 1


def test_faces_come_from_a_folder_of_aligned_crops(tmp_path: Path) -> None:
    """The GPU machine has no face models: aligned crops (+ NAME.mask.png) are read as is."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from e4t.bench.gpu import load_faces

    Image.new("RGB", (128, 128), (200, 150, 120)).save(tmp_path / "a.png")
    Image.new("L", (128, 128), 255).save(tmp_path / "a.mask.png")
    Image.new("RGB", (96, 96), (90, 60, 40)).save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not a face")
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    faces = load_faces(tmp_path, 64, processor)
    assert len(faces) == 2
    assert faces[0].pixel_values.shape == (3, 64, 64) and faces[0].mask is not None
    assert faces[1].mask is None and faces[1].clip_pixel_values.shape == (3, 32, 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no aligned face crops"):
        load_faces(empty, 64, processor)


@pytest.mark.slow
def test_bench_pretrain_on_an_architecture_prints_rates_memory_and_flops() -> None:
    """`e4t bench pretrain --arch ...`: one GPU's figures, here the tiny model on the CPU (no
    card, so no MFU); the FLOP count is FlopCounterMode's and does not depend on the device."""
    done = subprocess.run(
        [sys.executable, "-m", "e4t.cli", "bench", "pretrain", "--arch", "tiny",
         "--resolution-px", "32", "--batch-size", "2", "--train-steps", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    flops = float(re.search(r"model FLOPs per step .*: ([\d.e+]+)", out)[1])
    assert flops > 1e6
    rows = re.findall(r"checkpointing (on |off): ([\d.]+) samples/s, peak memory ([\d.]+) GiB", out)
    assert [r[0].strip() for r in rows] == ["off", "on"] and all(float(r[1]) > 0 for r in rows)
    assert "MFU" not in out  # no card: no peak to divide by


def test_mfu_uses_the_cards_bf16_peak() -> None:
    from e4t.bench.pretrain import peak_flops

    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None


def test_a_bad_crop_is_a_rejected_row_and_the_other_crops_are_written(tmp_path: Path) -> None:
    """Each crop is guarded on its own: a truncated file and a crop whose mask is not an
    image are rows with their reason in manifest.jsonl; the readable crop is the shard."""
    import json

    from PIL import Image

    from e4t.bench.e2e import write_crop_shards

    crops = tmp_path / "crops"
    crops.mkdir()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(crops / "ada.png")
    (crops / "cut.jpg").write_bytes((crops / "ada.png").read_bytes()[:40])
    Image.new("RGB", (64, 64), (90, 60, 40)).save(crops / "bo.png")
    (crops / "bo.mask.png").write_bytes(b"not a png")
    stats = write_crop_shards(crops, tmp_path / "shards")
    assert stats["num_inputs"] == 3 and stats["num_samples"] == 1
    rows = [json.loads(line) for line in (tmp_path / "shards" / "manifest.jsonl").open()]
    by_key = {row["key"]: row for row in rows}
    assert by_key["ada"]["status"] == "accepted"
    assert by_key["cut"]["status"] == by_key["bo"]["status"] == "rejected"
    assert by_key["cut"]["reason"] == "undecodable" and by_key["cut"]["source"] == "cut.jpg"
    assert "UnidentifiedImageError" in by_key["bo"]["detail"]


def test_the_gpu_bench_skips_a_crop_it_cannot_read_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`e4t bench gpu --faces DIR`: a truncated crop is skipped with one line naming it; the
    readable crops are the faces."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from e4t.bench.gpu import load_faces

    Image.new("RGB", (96, 96), (200, 150, 120)).save(tmp_path / "a.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "a.png").read_bytes()[:30])
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    faces = load_faces(tmp_path, 64, processor)
    assert len(faces) == 1
    err = capsys.readouterr().err
    assert "cut.png: undecodable" in err and "a.png" not in err.replace("cut.png", "")
