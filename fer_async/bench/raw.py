"""The compute bound: the bench's frames straight through `Analyzer.analyze`, no server."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from fer_async.bench.report import detection_figures, percentile, round_or_none


def run_raw(ns: argparse.Namespace, frames: Sequence[bytes]) -> dict[str, Any]:
    """The compute bound: frames straight through Analyzer.analyze, batches of --max-batch.

    Built like the server builds it (real model, real detector, the analyzer's own detection
    threads), in this process and on this thread; no sockets, no JSON, no batcher waits.
    """
    from fer_async.detector import create_detector_for
    from fer_async.model import FacialExpressionModel
    from fer_async.recognition import Analyzer

    settings = ns.settings  # the server's options as the server resolves them (cli.parse_args)
    model = FacialExpressionModel.from_options(settings)
    detector, detector_name = create_detector_for(
        settings.detector, settings.detector_model, detect_width=settings.detect_width
    )
    batch = ns.max_batch
    frames_done = errors = step = 0
    latencies: list[float] = []
    # One stream per slot of the batch, each at its own place in the frames' loop, with its own schedule.
    schedules = [settings.cadence.schedule() for _ in range(batch)]
    starts = [stream * len(frames) // batch for stream in range(batch)]
    searches: Counter[str] = Counter()
    with Analyzer(model, detector, align=settings.align) as analyzer:

        def one_batch() -> tuple[float, int]:
            nonlocal step
            chunk = [frames[(start + step) % len(frames)] for start in starts]
            step += 1
            started = time.perf_counter()
            results = analyzer.analyze(chunk, [schedule.plan() for schedule in schedules])
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            failed = 0
            for schedule, result in zip(schedules, results, strict=True):
                if isinstance(result, Exception):
                    failed += 1
                    continue
                failed += not result.faces
                schedule.observe(result.width, result.height, [face.box for face in result.faces])
                searches[result.search] += 1
            return elapsed_ms, failed

        warm_until = time.perf_counter() + ns.warmup
        one_batch()  # at least one, so the first measured batch never pays a first-call cost
        while time.perf_counter() < warm_until:
            one_batch()
        searches.clear()
        started = time.perf_counter()
        end = started + ns.duration
        while time.perf_counter() < end or not latencies:
            elapsed_ms, failed = one_batch()
            latencies.append(elapsed_ms)
            frames_done += batch
            errors += failed
        seconds = time.perf_counter() - started
    return {
        "mode": "raw",
        "device": model.device,  # GPU when onnxruntime runs the network through CUDA
        "providers": model.providers,
        "detector": detector_name,  # "haar" when YuNet's file could not be had: whole frames only
        "clients": 0,
        "frames": frames_done,
        "fps": round(frames_done / seconds, 2),
        # Per batch of --max-batch frames, not per frame.
        "p50_ms": round_or_none(percentile(latencies, 50)),
        "p95_ms": round_or_none(percentile(latencies, 95)),
        "p99_ms": round_or_none(percentile(latencies, 99)),
        "mean_ms": round_or_none(float(np.mean(latencies))),
        "mean_batch": float(batch),
        "dropped": 0,
        "errors": errors,  # frames that failed or had no face (should be 0: each has one)
        "timeouts": 0,
        "seconds": round(seconds, 2),
        "streams": batch,
        **detection_figures(searches),
    }
