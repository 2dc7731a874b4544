"""--ray ADDRESS: a cluster of two Ray nodes on this machine (loopback only) runs the chunks, rows as the plain run's.

The nodes are Ray's own multi-node test harness (`ray.cluster_utils.Cluster`): a head and a
second node, each a raylet with its own CPU and object store, what `ray start --head` and
`ray start --address` make on two machines. `ray start` itself replaces 127.0.0.1 with the
machine's network address, which these tests must not use. The CLI runs in its own process and
joins the cluster by its address, as on a real cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from analyze_clips import face_clip

# Loopback only, no usage report; set before Ray is imported (the CLI's process inherits them).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'fer_async[cluster]')")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from fer_async.analyze.__main__ import main  # noqa: E402
from fer_async.demo import write_clip  # noqa: E402

NODE_STORE_BYTES = 100 * 1024 * 1024
CLI_TIMEOUT_S = 300  # the CLI's own start, two workers loading the model, on a busy machine


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": NODE_STORE_BYTES, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=NODE_STORE_BYTES)
        assert cluster.address.startswith("127.0.0.1:")
        yield cluster.address
    finally:
        cluster.shutdown()


def test_two_nodes_share_the_chunks_and_the_rows_are_the_plain_runs(tmp_path: Path, two_nodes: str) -> None:
    inputs = [face_clip(tmp_path / "face.mp4", frames=96), tmp_path / "two_faces.mp4"]
    write_clip(inputs[1], seconds=6.4, fps=15)  # 96 frames
    # A detection period that divides the batch of 16 frames: chunks of 16 frames stay possible.
    period = ["--detect-every", "4"]
    assert main([*map(str, inputs), "--out", str(tmp_path / "plain") + "/", *period]) == 0
    command = [
        sys.executable,
        "-m",
        "fer_async.analyze",
        *map(str, inputs),
        "--out",
        str(tmp_path / "ray") + "/",
        *period,
    ]
    done = subprocess.run(
        [*command, "--ray", two_nodes, "--chunk-frames", "16"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # 12 chunks of 16 frames, each node a worker of one CPU: both take chunks.
    assert "ray: 12 chunks on 2 nodes, 0 decoded from their file's start" in done.stdout, done.stdout
    for name in ("face.csv", "two_faces.csv"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
