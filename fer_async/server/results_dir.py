"""The results directory: each analysis job's state and rows, where every server process finds them.

One job is one id (12 URL-safe characters, unguessable) and these files::

    ID.json                        its state (what GET /api/analyses/ID answers), replaced as it runs
    ID.csv  or  ID.incomplete.csv  its rows, renamed into place when the job has ended
    ID.stop                        a stop request, written by whichever process got the DELETE
    ID.lost                        the verdict on a job whose process stopped heartbeating (below)
    .ID.part<pid>.csv, .tmp-*      files being written, read only once their job is lost

The process running a job is the only writer of its state and rows; every process (a worker of
`--workers`, or a replica sharing the directory on a volume) reads them, asks for a stop, and
removes what has expired. Every file is written under a temporary name in the same directory and
renamed, so a reader never sees half a file (rename is atomic on local disks, NFS and CephFS).

A running job's owner rewrites its state at least every HEARTBEAT_S; a "running" state older than
LOST_AFTER_S belongs to a process that died and is answered as failed. The first reader to find it
so writes that verdict to ID.lost, which outweighs ID.json from then on, and copies the whole rows
of the part file to ID.incomplete.csv. A process that was only paused (SIGSTOP, a stuck VM) and
comes back cannot bring the job back to life: its next write of the state finds the verdict, and
it stops the job and discards its part file. The owner never writes ID.lost and readers never
write ID.json, so neither can undo the other. Ended jobs expire after RESULT_TTL_S, and at most
MAX_KEPT_JOBS are kept; whichever process sweeps removes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RESULT_TTL_S = 30 * 60.0
MAX_KEPT_JOBS = 32  # ended jobs whose results are still downloadable
HEARTBEAT_S = 2.0
# Several heartbeats missed: the process running the job is gone (a crash, a SIGKILL, a lost pod).
LOST_AFTER_S = 15.0
RUNNING_STATES = ("queued", "running")
LOST_MESSAGE = "the server process running this analysis stopped"
LOST_ROWS_WARNING = "the rows it had written are in the CSV"
_COPY_CHUNK = 1024 * 1024
_ID = re.compile(r"[A-Za-z0-9_-]{12}")
_STATE, _STOP, _LOST, _TEMPORARY = ".json", ".stop", ".lost", ".tmp-"
# Only files named like these are ever removed: --results-dir may be given a directory that holds more.
_OURS = re.compile(
    r"\.?[A-Za-z0-9_-]{12}(\.json|\.csv|\.incomplete\.csv|\.stop|\.lost|\.part\d+\.csv)|\.tmp-\w+\.(json|csv)"
)


def new_job_id() -> str:
    return secrets.token_urlsafe(9)  # 12 characters; results may be private: ids are not guessable


def is_job_id(text: str) -> bool:
    """Whether `text` can name a job: only such names ever reach a file name."""
    return _ID.fullmatch(text) is not None


def _job_of(file_name: str) -> str:
    """The job id a file of the directory belongs to ("" for none)."""
    return file_name.lstrip(".").split(".", 1)[0]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return record


def ended_at(state: dict[str, Any]) -> float | None:
    """When the job ended (wall clock), or None while it runs."""
    if state.get("state") in RUNNING_STATES:
        return None
    finished = state.get("finished_at")
    return float(finished) if finished is not None else float(state.get("updated_at", 0.0))


class ResultsDir:
    """The files of every job in one directory; blocking (small file operations): call off the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _state_path(self, job_id: str) -> Path:
        return self.path / f"{job_id}{_STATE}"

    def rows_target(self, job_id: str) -> Path:
        """Where the rows go (`RowWriter` writes `.ID.part*.csv` beside it and renames it into place)."""
        return self.path / f"{job_id}.csv"

    def rows_path(self, state: dict[str, Any]) -> Path | None:
        """The rows file of an ended job, when it has one."""
        name = state.get("rows_file")
        if not name or ended_at(state) is None:
            return None
        path = self.path / str(name)
        return path if path.parent == self.path and path.is_file() else None

    def _lost_path(self, job_id: str) -> Path:
        return self.path / f"{job_id}{_LOST}"

    def _replace_json(self, target: Path, record: dict[str, Any]) -> None:
        """Replace `target` at once: a reader gets the old file or the new one, never half of one."""
        handle, name = tempfile.mkstemp(dir=self.path, prefix=_TEMPORARY, suffix=_STATE)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(record, out, separators=(",", ":"))
            os.replace(name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise

    def write_state(self, state: dict[str, Any]) -> None:
        """Replace the job's state (its owner's heartbeat: stamped with the present)."""
        self._replace_json(self._state_path(state["id"]), state | {"updated_at": time.time()})

    def declared_lost(self, job_id: str) -> bool:
        """Whether a reader has given the job up for lost: its owner then stops it and writes no more."""
        return self._lost_path(job_id).exists()

    def read_state(self, job_id: str) -> dict[str, Any] | None:
        """The job's state, None for an unknown id; a running job whose process is gone reads as failed, for good."""
        if not is_job_id(job_id):
            return None
        state = _read_json(self._state_path(job_id))
        if state is None:
            return None
        verdict = _read_json(self._lost_path(job_id))
        if verdict is not None:
            return verdict
        if state.get("state") in RUNNING_STATES and time.time() - float(state.get("updated_at", 0.0)) > LOST_AFTER_S:
            verdict = state | {"state": "failed", "error": LOST_MESSAGE, "finished_at": state.get("updated_at")}
            verdict |= self._rows_of_lost(job_id)
            try:  # two readers may both get here: their verdicts are alike, and the last rename wins whole
                self._replace_json(self._lost_path(job_id), verdict)
            except OSError as exc:  # a full disk: answered all the same, and written by a later reader
                logger.warning("cannot write the verdict on lost analysis %s: %s", job_id, exc)
            return verdict
        return state

    def _rows_of_lost(self, job_id: str) -> dict[str, Any]:
        """What a lost job's process left in `.ID.part<pid>.csv`, up to its last whole row, as its
        `ID.incomplete.csv`: the state's fields that point to it ({} when it had no rows).

        The rows are flushed frame by frame, so only the last line may be cut. The part file is
        still: its process has not written its state for LOST_AFTER_S, and it writes its state
        as rows go by. It is copied, not moved, so that two readers here at once make the same file.
        """
        try:
            parts = sorted((p.stat().st_mtime, p) for p in self.path.glob(f".{job_id}.part*.csv"))
            if not parts:
                return {}
            handle, name = tempfile.mkstemp(dir=self.path, prefix=_TEMPORARY, suffix=".csv")
        except OSError:
            return {}
        target, lines, whole = self.path / f"{job_id}.incomplete.csv", 0, 0
        try:
            with parts[-1][1].open("rb") as part, os.fdopen(handle, "wb") as out:
                while chunk := part.read(_COPY_CHUNK):
                    out.write(chunk)
                    if (last := chunk.rfind(b"\n")) >= 0:
                        lines, whole = lines + chunk.count(b"\n"), out.tell() - len(chunk) + last + 1
                out.truncate(whole)
            shutil.copymode(parts[-1][1], name)  # mkstemp's 0600: readable as the job's other files
            if lines >= 2:  # more than its header
                os.replace(name, target)
        except OSError:
            lines = 0
        if lines < 2:
            with contextlib.suppress(OSError):
                os.unlink(name)
            return {}
        return {"rows_file": target.name, "rows": lines - 1, "warning": LOST_ROWS_WARNING}

    def request_stop(self, job_id: str) -> None:
        if is_job_id(job_id):
            self.path.joinpath(f"{job_id}{_STOP}").touch()

    def stop_requested(self, job_id: str) -> bool:
        return self.path.joinpath(f"{job_id}{_STOP}").exists()

    def clear_stop(self, job_id: str) -> None:
        """The request has been heard (the job has ended); one that comes later goes with the job."""
        self.path.joinpath(f"{job_id}{_STOP}").unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        """Every file of the job; its state first, so nobody is sent to rows that are going away."""
        self._state_path(job_id).unlink(missing_ok=True)
        for path in self.path.glob(f"*{job_id}.*"):
            if _job_of(path.name) == job_id and _OURS.fullmatch(path.name):
                path.unlink(missing_ok=True)

    def sweep(self) -> None:
        """Remove expired jobs, the oldest ended ones past MAX_KEPT_JOBS, and files no job owns."""
        now = time.time()
        try:
            names = [entry.name for entry in os.scandir(self.path)]
        except FileNotFoundError:
            return
        states = [s for name in names if name.endswith(_STATE) and (s := self.read_state(_job_of(name))) is not None]
        ended = sorted((ended_at(s) or 0.0, s["id"]) for s in states if ended_at(s) is not None)
        for number, (when, job_id) in enumerate(ended):
            if now - when > RESULT_TTL_S or len(ended) - number > MAX_KEPT_JOBS:
                logger.debug("analysis %s expired", job_id)
                self.remove(job_id)
        owned = {s["id"] for s in states}
        for name in names:
            # Leftovers of a process that died mid-write, or of a job removed meanwhile.
            if _job_of(name) not in owned and _OURS.fullmatch(name):
                path = self.path / name
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime > LOST_AFTER_S and path.is_file():
                        path.unlink()
