"""Typed application state: one `web.AppKey` per resource the app factory sets up."""

from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web

from fer_async.analyzer import Analyzer, Frame, Predictor
from fer_async.batcher import Batcher
from fer_async.config import Settings
from fer_async.labels import FrameResult
from fer_async.metrics import Metrics

if TYPE_CHECKING:
    from fer_async.server.mjpeg import VideoHub

FrameBatcher = Batcher[Frame, FrameResult]

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
MODEL: web.AppKey[Predictor] = web.AppKey("model")
# The single thread every model call (and so every Analyzer.analyze) runs on.
MODEL_EXECUTOR: web.AppKey[ThreadPoolExecutor] = web.AppKey("model_executor", ThreadPoolExecutor)
ANALYZER: web.AppKey[Analyzer] = web.AppKey("analyzer", Analyzer)
BATCHER: web.AppKey[FrameBatcher] = web.AppKey("batcher")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
# Weak so that a socket whose handler has returned disappears without bookkeeping.
WEBSOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("websockets")
VIDEO_HUB: web.AppKey[VideoHub] = web.AppKey("video_hub")
# The face detector that runs: "yunet", or "haar" (asked for, or YuNet's file could not be had).
DETECTOR_NAME: web.AppKey[str] = web.AppKey("detector_name", str)
