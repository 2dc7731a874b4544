"""The WebSocket endpoint `/ws`: webcam frames in, faces with emotions out.

The protocol is documented once, in `fer_async.server.protocol`; a `Connection`
(`fer_async.server.connection`) serves each client. This handler only checks the handshake's
Origin and hands the app's resources to the connection.
"""

from __future__ import annotations

import logging

from aiohttp import web

from fer_async.server.connection import Connection
from fer_async.server.keys import METRICS, PIPELINE, SETTINGS, WEBSOCKETS
from fer_async.server.protocol import origin_allowed

logger = logging.getLogger(__name__)


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    origin = request.headers.get("Origin")
    if not origin_allowed(origin, request.scheme, request.host, settings.allow_origins):
        logger.warning("refused WebSocket from %s: Origin %r", request.remote, origin)
        return web.json_response({"error": "origin not allowed"}, status=403)
    return await Connection.serve(
        request,
        settings=settings,
        batcher=request.app[PIPELINE],
        metrics=request.app[METRICS],
        connections=request.app[WEBSOCKETS],
    )
