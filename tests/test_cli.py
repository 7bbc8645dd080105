"""The command line as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def _e4t(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "e4t.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_curate_command(photos_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _e4t(
        "curate", str(photos_dir), str(out), "--preset", "tiny", "--workers", "1", "--no-track"
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert f"→ {stats['num_samples']} samples" in done.stdout
    assert "manifest" in done.stdout


@pytest.mark.slow
def test_curate_command_errors_are_clear(tmp_path: Path) -> None:
    done = _e4t("curate", str(tmp_path / "missing"), str(tmp_path / "o"), "--no-track")
    assert done.returncode == 2
    assert "missing: no such folder" in done.stderr and "Traceback" not in done.stderr
    done = _e4t("curate", str(tmp_path), str(tmp_path / "o"), "--set", "align.size=3")
    assert done.returncode == 2 and "align.size" in done.stderr


def test_bench_curate_prints_throughput_and_stage_shares() -> None:
    done = _e4t("bench", "curate", "--num-images", "6", "--workers", "1", "--size-px", "512")
    assert done.returncode == 0, done.stderr
    assert re.search(r"→ \d+\.\d+ images/s", done.stdout)
    assert float(re.search(r"peak RSS: ([\d.]+) GiB in total", done.stdout)[1]) > 0
    shares = [float(m) for m in re.findall(r"(\d+\.\d) %", done.stdout)]
    assert len(shares) == 6 and abs(sum(shares) - 100) < 1.0


def test_bench_model_prints_counts_size_time_memory() -> None:
    done = _e4t(
        "bench",
        "model",
        "--arch",
        "tiny",
        "--resolution-px",
        "64",
        "--batch-size",
        "2",
        "--train-steps",
        "1",
    )
    assert done.returncode == 0, done.stderr
    for label in (
        "base UNet",
        "encoder",
        "offsets",
        "concept artifact",
        "training step",
        "peak memory",
    ):
        assert label in done.stdout
    assert int(re.search(r"concept artifact: ([\d,]+) bytes", done.stdout)[1].replace(",", "")) > 0


@pytest.mark.slow
def test_model_commands_end_to_end(tmp_path: Path, photos_dir: Path) -> None:
    from PIL import Image

    steps = [
        ("init-model", "--arch", "tiny", str(tmp_path / "base")),
        (
            "init-domain",
            "--preset",
            "tiny",
            "--base-model",
            str(tmp_path / "base"),
            str(tmp_path / "domain"),
        ),
        (
            "encode-concept",
            str(photos_dir / "obama.jpg"),
            str(tmp_path / "concept"),
            "--model",
            str(tmp_path / "domain"),
        ),
        (
            "generate",
            "--model",
            str(tmp_path / "domain"),
            "--concept",
            str(tmp_path / "concept"),
            "--prompt",
            "a photo of {} as an astronaut",
            "-n",
            "2",
            "--seed",
            "3",
            "--sample-steps",
            "3",
            "--out",
            str(tmp_path / "images"),
        ),
    ]
    for args in steps:
        done = _e4t(*args)
        assert done.returncode == 0, f"{args[0]}: {done.stderr[-2000:]}"
        # a normal run prints no warning and no per-file loading bars
        noise = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if re.search(r"warn|torchvision|Loading weights|Writing model shards", line, re.I)
        ]
        assert noise == [], f"{args[0]}: {noise}"
    pngs = sorted((tmp_path / "images").glob("*.png"))
    assert len(pngs) == 2
    info = Image.open(pngs[1]).text
    assert info["prompt"] == "a photo of {} as an astronaut" and info["seed"] == "4"

    done = _e4t(
        "generate",
        "--model",
        str(tmp_path / "base"),
        "--concept",
        str(tmp_path / "concept"),
        "--prompt",
        "{}",
    )
    assert done.returncode == 2 and "not an E4T domain model" in done.stderr


@pytest.mark.slow
def test_upload_copies_a_folder_keeping_relative_paths(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    (src / "a.jpg").write_bytes(b"a")
    (src / "sub" / "b.png").write_bytes(b"b")
    done = _e4t("upload", str(src), str(tmp_path / "dest"))
    assert done.returncode == 0, done.stderr
    assert "uploaded 2 files" in done.stdout
    assert (tmp_path / "dest" / "sub" / "b.png").read_bytes() == b"b"
    missing = _e4t("upload", str(tmp_path / "nope"), str(tmp_path / "dest"))
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``e4t ARGS`` in this process (no subprocess start-up): exit code, stderr."""
    from e4t.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_a_bad_model_uri_is_one_clear_line_and_creates_no_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No MLflow traceback, and resolving a model URI never creates ./data/mlflow.db."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("E4T_DATA_DIR", raising=False)  # the default: ./data
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    concept = tmp_path / "concept"
    concept.mkdir()
    (concept / "concept.json").write_text("{}")
    (concept / "concept.safetensors").write_bytes(b"")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64), (200, 120, 90)).save(photos / "ada.jpg")
    cases = [
        (("generate", "--model", "models:/noslash", "--concept", str(concept), "--prompt", "{}"),
         "'models:/noslash' is not a model URI: use models:/NAME@ALIAS"),
        (("export-concept", str(concept), "--model", "models:/e4t-faces@", "--out", "x"),
         "'models:/e4t-faces@' is not a model URI"),
        (("generate", "--model", "models:/e4t-faces@candidate", "--concept", str(concept),
          "--prompt", "{}"),
         f"no MLflow registry at {tmp_path / 'data' / 'mlflow.db'}"),
        (("export-concept", str(concept), "--model", "models:/e4t-faces/3", "--out", "x"),
         "set MLFLOW_TRACKING_URI"),
        (("personalize", str(photos), "--model", "models:/noslash", "--out", "x", "--no-track"),
         "'models:/noslash' is not a model URI"),
        (("personalize", str(photos), "--model", "models:/e4t-faces@champion", "--out", "x"),
         "no MLflow registry at"),
        (("evaluate", str(photos), "--model", "models:/e4t-faces@candidate", "--out", "x",
          "--no-track"),
         "no MLflow registry at"),
    ]  # fmt: skip
    for args, expected in cases:
        code, err = _main(capsys, *args)
        assert code == 2, (args, err)
        lines = [line for line in err.splitlines() if "e4t: error: " in line]  # bars aside
        assert len(lines) == 1 and lines[0].startswith("e4t: error: "), err
        assert expected in lines[0] and "Traceback" not in err
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "x").exists()


def test_a_missing_concept_url_fails_before_the_model_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The concept is checked first: the model given here is no model at all, so any
    attempt to load it would fail with the model's error instead of the concept's; and the
    export writes nothing (it used to write the domain's base before reading the concept)."""
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    missing = tmp_path / "concepts" / "ada"
    for args in (
        ("generate", "--model", str(not_a_model), "--concept", str(missing), "--prompt", "{}"),
        ("export-concept", str(missing), "--model", str(not_a_model), "--out", str(tmp_path / "o")),
        ("export-concept", missing.as_uri(), "--model", str(not_a_model), "--out", "o"),
    ):
        code, err = _main(capsys, *args)
        assert code == 2, err
        assert "no E4T concept there (concept.json missing)" in err, err
        assert str(missing) in err and "not-a-model" not in err
    assert not (tmp_path / "o").exists()
    photo = (tmp_path / "photos" / "ada.jpg").as_uri()
    code, err = _main(
        capsys, "encode-concept", photo, str(tmp_path / "c"), "--model", str(not_a_model)
    )
    assert code == 2 and f"{photo}: no such image" in err


def test_download_copies_a_file_or_a_folder_and_refuses_missing_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "concepts" / "ada"
    (src / "sub").mkdir(parents=True)
    (src / "concept.json").write_text('{"concept_id": "ada"}')
    (src / "sub" / "x.bin").write_bytes(b"\x00\x01")
    code, _ = _main(capsys, "download", src.as_uri(), str(tmp_path / "copy"))
    assert code == 0
    assert (tmp_path / "copy" / "concept.json").read_text() == '{"concept_id": "ada"}'
    assert (tmp_path / "copy" / "sub" / "x.bin").read_bytes() == b"\x00\x01"
    # one file, as cp does: into a folder (trailing / or existing), else to the name given
    code, _ = _main(capsys, "download", str(src / "concept.json"), f"{tmp_path / 'one'}/")
    assert code == 0 and (tmp_path / "one" / "concept.json").exists()
    code, _ = _main(capsys, "download", str(src / "concept.json"), str(tmp_path / "one"))
    assert code == 0 and (tmp_path / "one" / "concept.json").exists()
    code, _ = _main(capsys, "download", src.as_uri() + "/concept.json", str(tmp_path / "c.json"))
    assert code == 0 and (tmp_path / "c.json").read_text() == '{"concept_id": "ada"}'
    code, err = _main(capsys, "download", str(tmp_path / "nope"), str(tmp_path / "two"))
    assert code == 2 and "nope: no such folder or prefix" in err
    assert not (tmp_path / "two").exists()


def test_upload_of_one_file_is_cp_like(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One file goes to DEST itself (a batch's READY marker), or into DEST when DEST ends
    with / or is an existing folder; never DEST/NAME/NAME."""
    marker = tmp_path / "READY"
    marker.write_bytes(b"")
    batch = tmp_path / "inbox" / "b2"
    batch.mkdir(parents=True)
    assert _main(capsys, "upload", str(marker), str(batch / "READY"))[0] == 0
    assert (batch / "READY").is_file()  # the object itself, not b2/READY/READY
    other = tmp_path / "inbox" / "b3"
    assert _main(capsys, "upload", str(marker), f"{other}/")[0] == 0
    assert (other / "READY").is_file()
    assert _main(capsys, "upload", str(marker), str(batch))[0] == 0  # an existing folder
    assert sorted(p.name for p in batch.iterdir()) == ["READY"]


@pytest.mark.slow
def test_the_pinned_version_is_recorded_beside_the_alias(
    tiny_dir: Path, photos_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """concept.json, summary.json, the result rows, export.json and the images' provenance
    record ``model_version_uri`` (the version @candidate named then) beside the alias; after
    a second registration moves @candidate, the concept still names the first version."""
    import shutil

    from PIL import Image

    from e4t.config import ModelConfig, PersonalizeConfig, load_config
    from e4t.jobs import personalize as job
    from e4t.models.e4t_model import E4TModel
    from e4t.tracking import register_domain_model, start_pretrain_run
    from e4t.tracking.registry import resolve_model_version_uri

    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    folder = model.save_pretrained(tmp_path / "domain")

    def register() -> dict[str, str]:
        run_id = start_pretrain_run({"domain": "pintest"}, str(tmp_path), {}, "e4t-pretrain", {})
        return register_domain_model(run_id, folder, "pintest", base_model=str(tiny_dir))

    first = register()
    alias = first["alias_uri"]
    assert alias == "models:/e4t-pintest@candidate"
    images = tmp_path / "photos"
    images.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", images / "obama.jpg")
    config = load_config(PersonalizeConfig, "personalize", "tiny", values={"tune.num_steps": 1})
    out = tmp_path / "out"
    result = job.run(job.request(str(images), str(out), alias, config, track=False))
    (row,) = [r for r in result.rows if r["status"] == "done"]
    concept = out / "concepts" / row["concept_id"]
    recorded = [
        json.loads((concept / "concept.json").read_text()),
        json.loads((out / "summary.json").read_text()),
        json.loads((out / "results.jsonl").read_text().splitlines()[0]),
    ]
    for meta in recorded:
        assert (meta["model_uri"], meta["model_version_uri"]) == (alias, first["model_uri"])

    code, err = _main(
        capsys, "export-concept", str(concept), "--model", alias, "--out", str(tmp_path / "x"),
        "--sample-steps", "2",
    )  # fmt: skip
    assert code == 0, err
    (export_json,) = (tmp_path / "x").rglob("export.json")
    exported = json.loads(export_json.read_text())
    assert (exported["model_uri"], exported["model_version_uri"]) == (alias, first["model_uri"])
    code, err = _main(
        capsys, "generate", "--model", alias, "--concept", str(concept), "--prompt", "{}",
        "-n", "1", "--sample-steps", "2", "--out", str(tmp_path / "images"),
    )  # fmt: skip
    assert code == 0, err
    (png,) = (tmp_path / "images").glob("*.png")
    text = Image.open(png).text
    assert (text["e4t.model_uri"], text["e4t.model_version_uri"]) == (alias, first["model_uri"])

    second = register()  # moves @candidate
    assert resolve_model_version_uri(alias) == second["model_uri"] != first["model_uri"]
    meta = json.loads((concept / "concept.json").read_text())
    assert meta["model_version_uri"] == first["model_uri"] == "models:/e4t-pintest/1"


def test_an_unknown_model_in_a_real_registry_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).create_registered_model("e4t-known")
    capsys.readouterr()  # MLflow's own notes on creating the database
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    concept = tmp_path / "concept"
    concept.mkdir()
    (concept / "concept.json").write_text("{}")
    (concept / "concept.safetensors").write_bytes(b"")
    for model, expected in (
        ("models:/e4t-unknown@candidate", "models:/e4t-unknown@candidate: the registry at"),
        ("models:/e4t-known@candidate", "models:/e4t-known@candidate: the registry at"),
        ("models:/e4t-known/7", "models:/e4t-known/7: the registry at"),
    ):
        args = ("generate", "--model", model, "--concept", str(concept), "--prompt", "{}")
        code, err = _main(capsys, *args)
        assert code == 2 and err.startswith(f"e4t: error: {expected}"), err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


NOISE = r"warn|torchvision|Loading weights|Writing model shards|Downloading artifacts|it/s\]"

# an entry point's start (quiet_libraries), then a model registration as pretrain-domain does
REGISTER = """
import json, sys
from e4t.quiet import quiet_libraries
quiet_libraries()
from e4t.tracking import register_domain_model, start_pretrain_run
run_id = start_pretrain_run({"domain": "quiettest"}, sys.argv[1], {}, "e4t-pretrain", {})
print(json.dumps(register_domain_model(run_id, sys.argv[2], "quiettest", base_model=sys.argv[3])))
"""


@pytest.mark.slow
def test_a_model_is_registered_and_fetched_without_warnings_or_bars(
    tiny_dir: Path, photos_dir: Path, tmp_path: Path
) -> None:
    """Behind an entry point's quiet_libraries(): registering a model (MLflow's pyfunc
    log_model) prints none of MLflow's UserWarnings, and a command that fetches a registered
    model prints no download or per-file loading bar."""
    from e4t.config import ModelConfig
    from e4t.models.e4t_model import E4TModel

    model = E4TModel.from_config(ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32}))
    folder = model.save_pretrained(tmp_path / "domain")
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", REGISTER, str(tmp_path), str(folder),
         str(tiny_dir)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "UserWarning" not in done.stderr, done.stderr[-3000:]
    registered = json.loads(done.stdout.strip().splitlines()[-1])

    done = _e4t("encode-concept", str(photos_dir / "obama.jpg"), str(tmp_path / "concept"),
                "--model", registered["alias_uri"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    noise = [ln for ln in (done.stdout + done.stderr).splitlines() if re.search(NOISE, ln, re.I)]
    assert noise == []


@pytest.mark.slow
def test_every_pass_of_a_job_uses_the_version_pinned_at_its_start(
    tiny_dir: Path, photos_dir: Path, tmp_path: Path
) -> None:
    """@candidate moves to another model between the job's two passes: both concepts are
    tuned against, and record, the version the job pinned at its start."""
    import shutil

    from e4t.config import ModelConfig, PersonalizeConfig, load_config
    from e4t.jobs import personalize as job
    from e4t.models.e4t_model import E4TModel
    from e4t.tracking import register_domain_model, start_pretrain_run

    def register(seed: int) -> dict[str, str]:
        config = ModelConfig(base_model=str(tiny_dir), encoder={"hidden_dim": 32})
        model = E4TModel.from_config(config, seed=seed)
        folder = model.save_pretrained(tmp_path / f"domain-{seed}")
        run_id = start_pretrain_run({"domain": "movetest"}, str(tmp_path), {}, "e4t-pretrain", {})
        return register_domain_model(run_id, folder, "movetest", base_model=str(tiny_dir))

    first = register(1)
    images = tmp_path / "photos"
    images.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", images / "obama.jpg")
    shutil.copyfile(photos_dir / "biden.jpg", images / "biden.jpg")
    config = load_config(
        PersonalizeConfig,
        "personalize",
        "tiny",
        values={"tune.num_steps": 1, "concepts_per_pass": 1, "preview_steps": 1},
    )
    moved: list[dict[str, str]] = []

    def move_the_alias(chunk: list[Any]) -> None:  # the pass's ConceptResults
        if not moved:  # after the first pass, before the second
            moved.append(register(2))

    out = tmp_path / "out"
    request = job.request(str(images), str(out), first["alias_uri"], config, track=False)
    result = job.run(request, on_pass=move_the_alias)
    assert moved and moved[0]["version"] != first["version"]
    done = [r for r in result.rows if r["status"] == "done"]
    assert len(done) == 2
    metas = [json.loads((out / "concepts" / r["concept_id"] / "concept.json").read_text())
             for r in done]  # fmt: skip
    assert {m["model_version_uri"] for m in metas} == {first["model_uri"]}
    assert len({m["domain_fingerprint"] for m in metas}) == 1


def test_s3_without_credentials_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An s3:// URL with no S3 settings in the environment: one line naming what to set,
    exit 2, no botocore traceback (nothing is reached: no endpoint, no credentials)."""
    for name in (
        "E4T_S3_ENDPOINT_URL",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)  # fmt: skip
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, err = _main(capsys, "download", "s3://somebucket/x/concept.json", str(tmp_path / "d"))
    assert code == 2, err
    assert err.startswith("e4t: error: S3:") and "E4T_S3_ENDPOINT_URL" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_error_lines_escape_what_an_untrusted_file_held() -> None:
    from e4t.cli import printable

    assert printable("PWNED\x1b[2J\nnext") == "PWNED\\x1b[2J\\nnext"
    assert printable("x" * 5000).endswith("…") and len(printable("x" * 5000)) == 2001


def test_help_of_every_command_imports_no_torch() -> None:
    """`e4t --help` and `e4t <command> --help` build every parser without the heavy
    libraries (each command imports them in its handler)."""
    probe = (
        "import contextlib, io, json, sys\n"
        "from e4t.cli import build_parser\n"
        "parser = build_parser()\n"
        "names = list(parser._subparsers._group_actions[0].choices)\n"
        "codes = {}\n"
        "for name in [None, *names]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            parser.parse_args([name, '--help'] if name else ['--help'])\n"
        "        except SystemExit as done:\n"
        "            codes[name or ''] = done.code\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'pydantic')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(done.stdout)
    assert out["heavy"] == []
    assert len(out["codes"]) == 15 and set(out["codes"].values()) == {0}
    assert {"", "curate", "export-concept", "upload", "download", "bench"} <= set(out["codes"])


def test_each_architecture_name_has_its_builders_and_its_model_preset() -> None:
    """Names in one place (e4t.models.arch_names): the CLI's choices, the benchmarks'
    presets and the builders read them; a name without a builder or a preset fails here."""
    import argparse
    import typing

    from e4t.bench.common import ARCH_PRESETS
    from e4t.cli import build_parser
    from e4t.config import REPO_CONFIGS, ArchName
    from e4t.models import architectures
    from e4t.models.arch_names import ARCH_NAMES, MODEL_PRESETS

    assert "tiny" in ARCH_NAMES and ARCH_NAMES == typing.get_args(ArchName)
    assert architectures.ARCHS == ARCH_NAMES
    for name in ARCH_NAMES:
        for table in (architectures._UNET, architectures._VAE, architectures._TEXT):
            assert name in table, f"{name}: no builder entry in e4t/models/architectures.py"
        assert architectures._VISION_FOR[name] in architectures._VISION, name
        assert (REPO_CONFIGS / "model" / f"{MODEL_PRESETS[name]}.yaml").is_file(), name
        assert ARCH_PRESETS[name] == MODEL_PRESETS[name]
    assert set(MODEL_PRESETS) == set(ARCH_NAMES)

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {"init-model": "--arch", "pretrain": "--init-arch", "bench": "--arch"}
    for command, flag in flags.items():
        action = next(a for a in commands.choices[command]._actions if flag in a.option_strings)
        assert list(action.choices or ()) == list(ARCH_NAMES), command


def test_bench_passes_must_each_divide_the_largest_and_be_given_once() -> None:
    """Every pass size is timed on the same max(passes) concepts: a size that does not
    divide it would end on a short pass (or fail minutes in), so the parser refuses it."""
    import argparse

    from e4t.cli.bench import _pass_sizes

    assert _pass_sizes("1,4,8") == (1, 4, 8)
    assert _pass_sizes("2") == (2,)
    for bad in ("3,8", "1,4,4", "0,2", "x", "", "1,,2"):
        with pytest.raises(argparse.ArgumentTypeError, match="1,"):
            _pass_sizes(bad)
