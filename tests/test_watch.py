"""The folder watcher's scanning: READY batches only, each once, state survives restarts."""

from __future__ import annotations

from pathlib import Path

from flows.watch import scan_once


def test_ready_batches_are_triggered_once(tmp_path: Path) -> None:
    calls: list[dict] = []

    def trigger(parameters: dict) -> str:
        calls.append(parameters)
        return f"run-{len(calls)}"

    inbox = tmp_path / "inbox"
    (inbox / "b1").mkdir(parents=True)
    (inbox / "b2").mkdir()
    (inbox / "b1" / "READY").write_text("")
    assert scan_once(str(inbox), str(tmp_path / "out"), "models:/e4t-faces@champion", trigger) == [
        "b1"
    ]
    assert calls[0] == {
        "images_url": str(inbox / "b1"),
        "output_url": str(tmp_path / "out/b1"),
        "model_uri": "models:/e4t-faces@champion",
    }
    # a restart sees the state file: nothing twice; b2 becomes ready later
    assert scan_once(str(inbox), str(tmp_path / "out"), "m", trigger) == []
    (inbox / "b2" / "READY").write_text("")
    assert scan_once(str(inbox), str(tmp_path / "out"), "m", trigger) == ["b2"]
    assert len(calls) == 2
