"""Scratch directories: those whose process died (SIGKILL) are removed by the next server of their
kind; a live one never is, whatever its process id says (another pid namespace sharing /tmp)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fer_async.scratch import orphans, remove_scratch, scratch_dir


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_killed_processes_directory_goes_and_a_live_ones_stay(private_tmp: Path) -> None:
    # A real process makes one and is killed with SIGKILL: the kernel frees its lock.
    code = (
        "import os, signal, sys, tempfile; tempfile.tempdir = sys.argv[1]; "
        "from fer_async.scratch import scratch_dir; "
        "d = scratch_dir('fer-uploads-'); (d / 'upload-1.mp4').write_bytes(b'x' * 1000); "
        "print(d, flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(private_tmp)], capture_output=True, text=True)
    left = Path(killed.stdout.strip())
    assert killed.returncode == -9 and (left / "upload-1.mp4").is_file()

    # A live directory whose process id names nothing here (a process of another pid namespace).
    foreign = private_tmp / "fer-uploads-999999999-abc"
    foreign.mkdir()
    held = os.open(foreign, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)
    unowned = private_tmp / "fer-uploads-k3j2l1"  # not made by scratch_dir: left alone
    unowned.mkdir()
    try:
        assert orphans("fer-uploads-") == [left]
        made = scratch_dir("fer-uploads-")
        assert made.name.startswith(f"fer-uploads-{os.getpid()}-") and list(made.iterdir()) == []
        assert not left.exists() and foreign.is_dir() and unowned.is_dir()
        assert made not in orphans("fer-uploads-")  # its own, live
        remove_scratch(made)
        assert not made.exists()
    finally:
        os.close(held)
