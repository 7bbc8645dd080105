"""Hostile inputs end to end: what a folder from the wild (or an attacker) holds must become
a clear error or a row, never a traceback, a crash or a write outside the output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# ------------------------------------------------------------ hostile concept folders


def _nan(folder: Path) -> None:
    _edit_tensors(folder, lambda t: t["word"].fill_(float("nan")))


def _inf(folder: Path) -> None:
    _edit_tensors(folder, lambda t: t["head.bias"].fill_(float("inf")))


def _int8(folder: Path) -> None:
    _edit_tensors(folder, lambda t: t.update(word=t["word"].to(torch.int8)))


def _edit_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "concept.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "concept.safetensors"))


def _edit_json(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "concept.json"
        path.write_bytes(edit(path.read_bytes()))

    return apply


def _truncated_tensors(folder: Path) -> None:
    path = folder / "concept.safetensors"
    path.write_bytes(path.read_bytes()[:100])


#: folder name → how a sound concept is made hostile, and what its one-line error says
HOSTILE_CONCEPTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "nan-word": (_nan, "NaN or Inf"),
    "inf-head": (_inf, "NaN or Inf"),
    "int8-word": (_int8, "not floating point"),
    "truncated-json": (_edit_json(lambda raw: raw[: len(raw) // 2]), "not valid JSON"),
    "list-json": (_edit_json(lambda raw: b"[" + raw + b"]"), "JSON list"),
    "latin1-json": (_edit_json(lambda raw: raw.replace(b"face", b"f\xe9ce")), "not UTF-8"),
    "rank-four": (_edit_json(lambda raw: raw.replace(b'"rank": 4', b'"rank": "four"')), "rank"),
    "truncated-tensors": (_truncated_tensors, "not a readable safetensors file"),
}


def _files_outside(root: Path, out: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and out not in p.parents}


@pytest.mark.slow
def test_generate_and_export_refuse_hostile_concepts_with_one_line_each(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from e4t.cli import main
    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    model_dir = model.save_pretrained(tmp_path / "model")
    cls = torch.randn(1, len(model.encoder.layer_indices), model.encoder.config.clip_hidden_size)
    bank = model.new_concepts(cls, rank=4, seeds=[0])
    concepts = tmp_path / "concepts"
    for name, (make_hostile, _) in HOSTILE_CONCEPTS.items():
        bank.save(0, concepts / name, model.concept_meta({"concept_id": name}), "fp32")
        make_hostile(concepts / name)
    bank.save(0, concepts / "ada", model.concept_meta({"concept_id": "ada-1a2b"}), "fp32")
    (concepts / "ada" / "inner").mkdir()
    out = tmp_path / "out"
    before = _files_outside(tmp_path, out)

    def run(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        return code, capsys.readouterr().err

    def generate(concept: str, images: Path) -> list[str]:
        return [
            *("generate", "--model", str(model_dir), "--concept", concept, "--prompt", "{}"),
            *("-n", "1", "--sample-steps", "2", "--out", str(images)),
        ]

    def export(concept: str, folder: Path) -> list[str]:
        return [
            *("export-concept", concept, "--model", str(model_dir), "--out", str(folder)),
            *("--sample-steps", "2"),
        ]

    for name, (_, says) in HOSTILE_CONCEPTS.items():
        folder = str(concepts / name)
        for argv in (generate(folder, out / "images" / name), export(folder, out / "export")):
            code, err = run(*argv)
            lines = [line for line in err.splitlines() if line.startswith("e4t: error:")]
            assert code != 0 and "Traceback" not in err, (name, argv[0], err)
            assert len(lines) == 1 and says in lines[0] and name in lines[0], (name, err)
        assert not (out / "images" / name).exists()  # no black images
        assert not (out / "export" / name).exists()  # no NaN embedding
    assert _files_outside(tmp_path, out) == before

    # a sound concept reached through a path ending in "..": everything under --out
    dotdot = str(concepts / "ada" / "inner" / "..")
    code, _ = run(*export(dotdot, out / "x"))
    assert code == 0
    assert json.loads((out / "x" / "ada-1a2b" / "export.json").read_text())["token"] == "<ada-1a2b>"
    code, _ = run(*generate(dotdot, out / "images" / "ada"))
    assert code == 0 and list((out / "images" / "ada").glob("*.png"))
    assert _files_outside(tmp_path, out) == before

    # and as a process: exit status 2, the one line, no traceback
    proc = subprocess.run(
        [sys.executable, "-m", "e4t.cli", *generate(str(concepts / "nan-word"), out / "p")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("e4t: error:") == 1 and "NaN or Inf" in proc.stderr


# ------------------------------------------------------------ hostile image files


@pytest.fixture(scope="module")
def hostile_files(photos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(folder, name → hostile.Expected): the hostile image files of tests/hostile.py."""
    from hostile import build_hostile_folder

    folder = tmp_path_factory.mktemp("hostile-images")
    return folder, build_hostile_folder(photos_dir, folder)


@pytest.fixture(scope="module")
def hostile_dir(hostile_files: tuple) -> Path:
    """A folder of hostile image files; ``hostile_expected`` says what each must become.
    Add a case in tests/hostile.py: every test taking this folder sees it."""
    return hostile_files[0]


@pytest.fixture(scope="module")
def hostile_expected(hostile_files: tuple) -> dict:
    return hostile_files[1]


@pytest.mark.slow
def test_curate_turns_every_hostile_file_into_one_row(
    hostile_dir: Path, hostile_expected: dict, tmp_path: Path
) -> None:
    """Broken EXIF, other formats under image names, truncated, 1x1, 9400² images small on
    disk, a NaN float TIFF, byte-flipped copies: the job exits 0 with one manifest row per
    file, no traceback; files that raised carry the exception's type in their detail."""
    out = tmp_path / "curated"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "e4t.cli", "curate", str(hostile_dir), str(out)),
            *("--preset", "tiny", "--workers", "1", "--no-track"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    by_name = {Path(row["source"]).name: row for row in rows}
    assert len(rows) == len(by_name) == len(hostile_expected)
    assert set(by_name) == set(hostile_expected)
    for name, want in hostile_expected.items():
        row = by_name[name]
        if want.face:
            assert row["status"] == "accepted", (name, row)
            continue
        assert row["status"] == "rejected" and row["reason"], (name, row)
        allowed = want.reasons or (want.reason,)
        assert row["reason"] in allowed, (name, row)
        if want.detail:
            assert want.detail in row.get("detail", ""), (name, row)
        if row["reason"] in ("undecodable", "truncated"):
            # the exception that made it so: "Type: message"
            assert row.get("detail", "").split(":")[0].isidentifier(), (name, row)


def test_the_pyfunc_refuses_hostile_images_with_its_own_error(
    hostile_dir: Path, hostile_expected: dict, tmp_path: Path
) -> None:
    """Every hostile file, sent by path: an image or a PredictInputError naming the reason,
    never a raw struct.error / NotImplementedError / MemoryError."""
    from e4t.config import DecodeConfig
    from e4t.mlflow_model import PredictInputError, load_image

    for name, want in hostile_expected.items():
        if "9400" in name:
            continue  # the memory bound is test_decode's
        try:
            image = load_image(name, hostile_dir, DecodeConfig())
        except PredictInputError as err:
            assert not want.face, (name, err)
            assert "image refused:" in str(err), (name, err)
        else:
            assert image.mode == "RGB", name

    # the byte cap holds before reading: a 1 TiB sparse file is refused from its size
    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:
        handle.truncate(2**40)
    with pytest.raises(PredictInputError, match="too_large"):
        load_image("huge.png", tmp_path, DecodeConfig())


@pytest.mark.parametrize("value", [0, -3, "x", None, 10**6])
def test_the_pyfunc_refuses_a_num_steps_sampling_cannot_take(value: object) -> None:
    """num_steps 0 or -3 reached the scheduler as ZeroDivisionError / IndexError."""
    from e4t.mlflow_model import PredictInputError, _num_steps

    with pytest.raises(PredictInputError, match="num_steps"):
        _num_steps(value)
    assert _num_steps("12") == 12


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        ("DetectConfig", "min_detection_score", float("nan")),
        ("QualityConfig", "min_sharpness", float("inf")),
        ("TuneConfig", "templates", []),
        ("DataConfig", "templates", []),
        ("PersonalizeConfig", "preview_steps", 10**9),
        ("TrainConfig", "preview_steps", 10**9),
    ],
)
def test_config_refuses_values_that_silently_break_a_stage(
    model: str, field: str, value: object
) -> None:
    """A NaN score threshold compares False with every detection, no templates leaves no
    prompt to draw, a billion preview steps is a hang: refused where the config is read."""
    import pydantic

    from e4t import config

    cls = getattr(config, model)
    with pytest.raises(pydantic.ValidationError, match=field):
        cls(**{field: value})


@pytest.mark.slow
def test_personalize_turns_every_hostile_file_into_one_row(
    hostile_dir: Path, hostile_expected: dict, tiny_dir: Path, tmp_path: Path
) -> None:
    """The same hostile folder as a personalization inbox (one concept per file): the job
    exits 0, every file is accounted for by exactly one row, only real faces become
    concepts, and nothing is written outside --out."""
    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel

    domain = E4TModel.from_config(
        ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32})
    ).save_pretrained(tmp_path / "domain")
    out = tmp_path / "out"
    before = _files_outside(tmp_path, out)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "e4t.cli", "personalize", str(hostile_dir)),
            *("--model", str(domain), "--out", str(out), "--preset", "tiny"),
            *("--tune-steps", "1", "--set", "preview_steps=1", "--no-track"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    accounted = [f for row in rows for f in (row.get("files") or [row.get("source", "")])]
    names = sorted(Path(str(f)).name for f in accounted)
    assert names == sorted(hostile_expected), (names, sorted(hostile_expected))
    faces = {name for name, want in hostile_expected.items() if want.face}
    done_rows = [r for r in rows if r["status"] == "done"]
    assert len(done_rows) == len(faces), [(r.get("files"), r["status"]) for r in rows]
    for row in rows:
        if row["status"] != "done":
            assert row.get("reason"), row
    assert _files_outside(tmp_path, out) == before  # nothing outside --out
