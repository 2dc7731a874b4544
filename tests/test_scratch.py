"""Scratch directories of processes killed with SIGKILL are removed by the next server of their kind."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from fer_async.scratch import orphans, scratch_dir


def test_a_dead_processes_directories_go_and_a_live_ones_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names no process
    dead = tmp_path / f"fer-uploads-{gone.pid}-abc"
    (dead / "nested").mkdir(parents=True)
    (dead / "nested" / "upload-1.mp4").write_bytes(b"x" * 1000)
    alive = tmp_path / f"fer-uploads-{os.getppid()}-def"
    alive.mkdir()
    other_kind = tmp_path / f"fer-analyses-{gone.pid}-ghi"
    other_kind.mkdir()
    unnamed = tmp_path / "fer-uploads-k3j2l1"  # made before directories carried their process id
    unnamed.mkdir()

    assert orphans("fer-uploads-") == [dead]
    made = scratch_dir("fer-uploads-")
    assert made.name.startswith(f"fer-uploads-{os.getpid()}-") and made.is_dir()
    assert not dead.exists()
    assert alive.is_dir() and other_kind.is_dir() and unnamed.is_dir()
