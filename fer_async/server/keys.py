"""Typed application state: one `web.AppKey` per resource the app factory sets up."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from fer_async.config import Settings
from fer_async.metrics import Metrics
from fer_async.pipeline import FramePipeline
from fer_async.predictor import Predictor
from fer_async.recognition import Analyzer
from fer_async.server.connection import Connections
from fer_async.server.video_hub import VideoHub

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
MODEL: web.AppKey[Predictor] = web.AppKey("model")
# The single thread every model call (and so every Analyzer.analyze) runs on.
MODEL_EXECUTOR: web.AppKey[ThreadPoolExecutor] = web.AppKey("model_executor", ThreadPoolExecutor)
ANALYZER: web.AppKey[Analyzer] = web.AppKey("analyzer", Analyzer)
# Frames in, results out: prepared on the detection threads, then batched for the model.
PIPELINE: web.AppKey[FramePipeline] = web.AppKey("pipeline", FramePipeline)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
# The open WebSocket connections (admission and shutdown go through it).
WEBSOCKETS: web.AppKey[Connections] = web.AppKey("websockets", Connections)
VIDEO_HUB: web.AppKey[VideoHub] = web.AppKey("video_hub", VideoHub)
# The face detector that runs: "yunet", or "haar" (asked for, or YuNet's file could not be had).
DETECTOR_NAME: web.AppKey[str] = web.AppKey("detector_name", str)
# POST /api/predict bodies being read at once (each is buffered whole).
PHOTO_UPLOADS: web.AppKey[asyncio.Semaphore] = web.AppKey("photo_uploads", asyncio.Semaphore)
