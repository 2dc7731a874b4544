"""Cost of one model call: in-process (Keras, onnxruntime) vs the remote executor on MLServer.

    PYTHONPATH=$PWD python -m tests.remote.measure [--repeats 30] [--faces 1,4,16,32]

Starts MLServer from deploy/mlserver on loopback (tests/remote/oipserver.py, onnxruntime on one
thread), then for each batch size calls `predict` from a worker thread, as the analyzer does,
with flip TTA on (2N rows), and prints medians. The remote time is split into: building the
JSON body, the HTTP exchange (server included), parsing the answer, and the rest (mirroring,
the hop from the model thread to the event loop and back); the server's own onnxruntime time
comes from its `fernet_onnx_seconds` metric. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fer_async.model_choices import DEFAULT_MODEL_NAME, DEFAULT_WEIGHTS_DIR
from fer_async.oip import encode_request
from fer_async.remote import RemotePredictor, RemoteStats

from .oipserver import MLServer, cached_onnx, ensure_venv

FER2013 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fer2013" / "fer2013.npz"


def _faces(n: int) -> np.ndarray:
    if FER2013.is_file():
        return np.load(FER2013)["x_val"][:n]
    return np.random.default_rng(0).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def _median_ms(call: Callable[[], object], repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def _remote_rows(server: MLServer, sizes: list[int], repeats: int) -> list[dict[str, float]]:
    remote = RemotePredictor(server.url, DEFAULT_MODEL_NAME, flip_tta=True, timeout_s=30)
    await remote.start()
    assert remote.problem is None and remote.signature is not None, remote.problem
    rows = []
    try:
        for n in sizes:
            faces = _faces(n)
            await asyncio.to_thread(remote.predict, faces)  # warm-up (connection, server)
            remote.stats = RemoteStats()
            onnx_before = server.metric("fernet_onnx_seconds_sum")
            calls_before = server.metric("fernet_onnx_seconds_count")
            totals = []
            for _ in range(repeats):
                started = time.perf_counter()
                await asyncio.to_thread(remote.predict, faces)
                totals.append(time.perf_counter() - started)
            stats = remote.stats
            per = 1000 / repeats
            onnx_ms = (server.metric("fernet_onnx_seconds_sum") - onnx_before) * per
            rows.append(
                {
                    "faces": n,
                    "total": statistics.median(totals) * 1000,
                    "mean": statistics.mean(totals) * 1000,
                    "encode": stats.encode_s * per,
                    "http": stats.wire_s * per,
                    "server_onnx": onnx_ms,
                    "decode": stats.decode_s * per,
                    "requests": stats.requests / repeats,
                    "calls": (server.metric("fernet_onnx_seconds_count") - calls_before) / repeats,
                    "kb": len(encode_request(remote.signature, np.concatenate([faces, faces]))) / 1000,
                }
            )
    finally:
        await remote.aclose()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--faces", default="1,4,16,32", help="batch sizes (faces; rows sent = 2x with flip TTA)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.faces.split(",")]

    import onnxruntime

    from fer_async.model import FacialExpressionModel

    onnx_file = cached_onnx(DEFAULT_WEIGHTS_DIR, DEFAULT_MODEL_NAME)
    keras = FacialExpressionModel(DEFAULT_WEIGHTS_DIR, DEFAULT_MODEL_NAME, flip_tta=True, precision="fp32")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # as the server's runtime here (FERNET_THREADS=1)
    session = onnxruntime.InferenceSession(str(onnx_file), options)

    def local_onnx(faces: np.ndarray) -> np.ndarray:
        rows = np.concatenate([faces, faces[:, :, ::-1]])[..., None]
        (probs,) = session.run(None, {"faces": rows})
        return (probs[: len(faces)] + probs[len(faces) :]) / 2

    local: dict[int, tuple[float, float]] = {}
    for n in sizes:
        faces = _faces(n)
        keras_ms = _median_ms(lambda: keras.predict(faces), args.repeats)  # noqa: B023 (called at once)
        local[n] = (keras_ms, _median_ms(lambda: local_onnx(faces), args.repeats))  # noqa: B023

    with tempfile.TemporaryDirectory() as workdir:
        server = MLServer(ensure_venv(), onnx_file, Path(workdir))
        server.start()
        try:
            print(f"MLServer ready in {server.wait_ready():.1f} s")
            remote = asyncio.run(_remote_rows(server, sizes, args.repeats))
        finally:
            server.stop()

    print(f"\nms per predict() call, flip TTA on (2N rows), {args.repeats} calls each: medians, then the")
    print("remote call's mean and its parts (means: they add up; the rest is mirroring and the thread hop)")
    print("| faces | in-process Keras | in-process onnxruntime | remote (MLServer) | remote mean | JSON build |"
          " HTTP + server | of which onnxruntime on server | JSON parse | requests/calls | body kB |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in remote:
        n = int(row["faces"])
        print(
            f"| {n} | {local[n][0]:.1f} | {local[n][1]:.1f} | {row['total']:.1f} | {row['mean']:.1f} | "
            f"{row['encode']:.2f} | {row['http']:.1f} | {row['server_onnx']:.1f} | {row['decode']:.2f} | "
            f"{row['requests']:.0f}/{row['calls']:.1f} | {row['kb']:.0f} |"
        )


if __name__ == "__main__":
    main()
