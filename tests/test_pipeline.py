"""e4t-pipeline: bad parameters fail before any stage starts, naming the bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def photos(photos_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(photos_dir / "obama.jpg", folder / "obama.jpg")
    return folder


def test_missing_photo_folder_fails_fast(prefect_server: None, tmp_path: Path) -> None:
    from flows.pipeline import e4t_pipeline

    work = tmp_path / "work"
    with pytest.raises(FileNotFoundError, match="no such folder"):
        e4t_pipeline(photos_url=str(tmp_path / "missing"), work_url=str(work))
    assert not work.exists()  # no stage started


def test_folder_without_images_fails_fast(prefect_server: None, tmp_path: Path) -> None:
    from flows.pipeline import e4t_pipeline

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no photos here")
    with pytest.raises(FileNotFoundError, match="no images"):
        e4t_pipeline(photos_url=str(tmp_path / "notes"), work_url=str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_wrong_preset_fails_fast(prefect_server: None, photos: Path, tmp_path: Path) -> None:
    from flows.pipeline import e4t_pipeline

    with pytest.raises(Exception, match="preset 'huge' for stage 'curate' not found"):
        e4t_pipeline(photos_url=str(photos), work_url=str(tmp_path / "w"), preset="huge")
    with pytest.raises(ValueError, match="unknown stages"):
        e4t_pipeline(
            photos_url=str(photos), work_url=str(tmp_path / "w"), stage_presets={"train": "x"}
        )
    with pytest.raises(FileNotFoundError, match="base model"):
        e4t_pipeline(
            photos_url=str(photos),
            work_url=str(tmp_path / "w"),
            base_model=str(tmp_path / "no-model"),
            init_arch=None,
        )
    assert not (tmp_path / "w").exists()
