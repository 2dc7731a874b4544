"""Fixtures for the web layer: the real app (real model, real OpenCV) behind real sockets.

The model comes from tests/conftest.py (`real_model`, session-scoped: TensorFlow's import and
the weights load once). Each test builds its own app with `make_client(**settings)`, so limits
can be small and one test's clients cannot leak into the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fer_async.config import Settings
from fer_async.server.app import create_app

from .helpers import CLIP_NAME, Client, MakeClient, write_clip


@pytest.fixture(scope="session")
def clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_clip(tmp_path_factory.mktemp("clip") / CLIP_NAME).read_bytes()


@pytest.fixture
def video_dir(tmp_path: Path, clip_bytes: bytes) -> Path:
    """A fresh video directory per test (tests add symlinks to it)."""
    directory = tmp_path / "videos"
    directory.mkdir()
    (directory / CLIP_NAME).write_bytes(clip_bytes)
    return directory


@pytest.fixture
def base_settings(video_dir: Path) -> Settings:
    return Settings(host="127.0.0.1", port=0, video_dir=video_dir, max_wait_ms=2.0)


@pytest.fixture
def make_client(aiohttp_client: Any, real_model: Any, base_settings: Settings) -> MakeClient:
    """`await make_client(model=None, **settings_changes)` → a Client on a fresh real app."""

    async def make(model: Any = None, **changes: Any) -> Client:
        app = create_app(base_settings.replace(**changes), model=real_model if model is None else model)
        client: Client = await aiohttp_client(app)
        return client

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()
