"""``middleware.models``: putting a finished GGUF conversion in place when other processes convert too."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest

from middleware import models


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "weights").write_text(text)
    return path


def test_a_conversion_replaces_the_old_folder(tmp_path: Path) -> None:
    out = _folder(tmp_path / "model", "old")
    models._move_into_place(_folder(tmp_path / "tmp-1", "new"), out, tmp_path / "x.gguf")
    assert (out / "weights").read_text() == "new" and not (tmp_path / "tmp-1").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing left aside


def _racing(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make another process land its conversion at ``out`` just before this one moves its own there."""
    real_replace = os.replace

    def racing_replace(src: Path, dst: Path) -> None:
        if Path(dst) == out and not out.exists():
            _folder(out, "theirs")
        real_replace(src, dst)

    monkeypatch.setattr(models.os, "replace", racing_replace)


def test_a_conversion_finished_first_by_another_process_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model"
    _racing(out, monkeypatch)
    monkeypatch.setattr(models, "_conversion_ok", lambda folder, gguf: (folder / "weights").read_text() == "theirs")
    models._move_into_place(_folder(tmp_path / "tmp-1", "ours"), out, tmp_path / "x.gguf")
    assert (out / "weights").read_text() == "theirs" and not (tmp_path / "tmp-1").exists()


def test_a_broken_conversion_in_the_way_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model"
    _racing(out, monkeypatch)
    monkeypatch.setattr(models, "_conversion_ok", lambda folder, gguf: False)
    with pytest.raises(OSError):
        models._move_into_place(_folder(tmp_path / "tmp-1", "ours"), out, tmp_path / "x.gguf")


def test_processes_started_together_convert_once_and_keep_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two commands needing the same model at once: one converts, the other waits and loads that conversion
    (before, the second replaced the first's folder while the first was loading it)."""
    out, gguf = tmp_path / "model", tmp_path / "x.gguf"
    calls: list[int] = []

    def slow_convert(g: Path, o: Path) -> Path:
        calls.append(1)
        time.sleep(0.3)
        _folder(o, f"conversion {len(calls)}")
        return o

    monkeypatch.setattr(models, "convert_gguf", slow_convert)
    monkeypatch.setattr(models, "_conversion_ok", lambda folder, g: (folder / "weights").is_file())
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # flock also excludes two open files of one process
        got = list(pool.map(lambda _: models.converted(gguf, out), range(2)))
    assert got == [out, out] and calls == [1]
    assert (out / "weights").read_text() == "conversion 1"
    assert models.converted(gguf, out) == out and calls == [1]  # a good conversion is used as it is


def test_a_copy_of_the_same_gguf_elsewhere_uses_the_conversion(tmp_path: Path) -> None:
    """Two virtual environments (a CI clone and a checkout) hold the same GGUF at different paths and times:
    the conversion of one serves the other; a different file does not."""
    first, second, other = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf", tmp_path / "c" / "m.gguf"
    for path, data in ((first, b"weights"), (second, b"weights"), (other, b"weighTs")):
        path.parent.mkdir()
        path.write_bytes(data)
    os.utime(second, ns=(1, 1))
    recorded = {**models._source_stamp(first), "sha256": models._digest(first)}
    assert models._same_source(recorded, first)
    assert models._same_source(recorded, second)
    assert not models._same_source(recorded, other)  # same size, other content
    assert not models._same_source({k: v for k, v in recorded.items() if k != "sha256"}, second)  # an old stamp
