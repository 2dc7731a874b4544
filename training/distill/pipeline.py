"""The whole chain inside one time budget: teachers side by side, then the store, then students
side by side, each a child process running a step of `python -m training.distill`. This process
never imports Keras: it forks view renderers."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from training.distill.options import VIEW_SEED, Log, command_of, logger, splits
from training.distill.runs import load_run, store_record


class Steps:
    """Runs steps of `training.distill` as child processes, side by side, each with the pipeline's
    common options. A step that fails early on the chosen Keras backend is retried once on the
    torch backend, which every later step then uses too (a GPU image may hold a JAX that the
    installed Keras does not support)."""

    def __init__(self, args: argparse.Namespace, log_file: IO[bytes], log: Log) -> None:
        self.args, self.log_file, self.log = args, log_file, log
        self.env = dict(os.environ)

    def _spawn(self, step: list[str], deadline: float) -> subprocess.Popen[bytes]:
        a = self.args
        command = [
            sys.executable,
            "-m",
            "training.distill",
            *step,
            "--data",
            str(a.data),
            "--deadline",
            f"{deadline:.0f}",
        ]
        command += ["--precision", a.precision, "--batch-size", str(a.batch_size), "--max-epochs", str(a.max_epochs)]
        command += ["--lr", str(a.lr)] + (["--limit", str(a.limit)] if a.limit else [])
        command += ["--require-gpu"] if a.require_gpu else []
        return subprocess.Popen(command, stdout=self.log_file, stderr=subprocess.STDOUT, env=self.env)

    def run(self, jobs: dict[str, list[str]], deadline: float) -> list[str]:
        """Runs every job to its end; the names of those that failed."""
        running = {name: self._spawn(step, deadline) for name, step in jobs.items()}
        retried: set[str] = set()
        failed: list[str] = []
        while running:
            time.sleep(0.5)
            for name, process in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if process.returncode == 0:
                    continue
                backend = self.env.get("KERAS_BACKEND", "tensorflow")
                if name not in retried and backend != "torch" and time.time() < deadline - 60:
                    self.log(f"{name} failed on the {backend} backend (exit {process.returncode}): again on torch")
                    self.env["KERAS_BACKEND"] = "torch"
                    retried.add(name)
                    running[name] = self._spawn(jobs[name], deadline)
                else:
                    self.log(f"{name} failed (exit {process.returncode})")
                    failed.append(name)
        return failed


def cmd_pipeline(args: argparse.Namespace) -> None:
    """Teachers side by side, then the store, then students side by side, each with a deadline
    inside the budget; `summary.json` in `--out` records each stage as it ends."""
    log = logger("pipeline")
    started = time.time()
    end = started + args.minutes * 60.0
    teacher_end = started + args.minutes * 60.0 * args.teacher_share
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    summary: dict[str, Any] = {"command": command_of(args), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    def note(**entries: Any) -> None:
        summary.update(entries)
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")

    steps = Steps(args, (args.out / "pipeline.log").open("ab", buffering=0), log)
    views_path = args.work / "views.npy"
    teachers: dict[str, list[str]] = {}
    for spec in args.teachers:
        network, seed = spec.split(":")
        out = args.out / f"teacher_{network}_{seed}.npz"
        dtype = "float16" if network != "fernet" else "float32"  # the wide one must fit a 16 MB file
        step = ["teacher", "--network", network, "--seed", seed, "--out", str(out), "--save-dtype", dtype]
        teachers[str(out)] = [*step, "--views", str(views_path)]

    from training.views import render_views

    # Rendered (forked workers) before any child has started: they then share the page cache.
    train = splits(args)[0]
    np.save(views_path, render_views(train.x, args.views, VIEW_SEED))
    log(f"{args.views} views of {len(train)} faces rendered in {time.time() - started:.0f} s")
    log(f"{len(teachers)} teachers start, deadline in {teacher_end - time.time():.0f} s")
    failed = steps.run(teachers, teacher_end)
    done = [Path(p) for p in teachers if p not in failed and Path(p).is_file()]
    note(
        teachers=[load_run(p)[1] | {"file": p.name} for p in done],
        failed=failed,
        backend=steps.env.get("KERAS_BACKEND"),
    )
    if not done:
        log("no teacher finished: stopping")
        return

    store_path = args.work / "store.npz"
    step = ["store", "--teachers", *map(str, done), "--views", str(views_path), "--view-seed", str(VIEW_SEED)]
    if steps.run({"store": [*step, "--out", str(store_path)]}, end):
        return
    store = store_record(store_path)
    note(store=store)
    if store["ensemble_val_accuracy_tta"] < args.min_ensemble:
        log(f"ensemble below {args.min_ensemble:.3f} on PublicTest: no distillation (the issue's stop rule)")
        return

    students: dict[str, list[str]] = {}
    for spec in args.students:
        alpha, seed = spec.split(":")
        out = args.out / f"student_{alpha}_{seed}.npz"
        step = ["student", "--store", str(store_path), "--views", str(views_path), "--alpha", alpha, "--seed", seed]
        students[str(out)] = [*step, "--out", str(out)]
    log(f"{len(students)} students start, deadline in {end - time.time():.0f} s")
    failed = steps.run(students, end)
    finished = [Path(p) for p in students if p not in failed and Path(p).is_file()]
    note(students=[{k: v for k, v in load_run(p)[1].items() if k != "store"} | {"file": p.name} for p in finished])
    log(f"done in {time.time() - started:.0f} s")
