"""The aiohttp web layer: app factory, WebSocket endpoint, MJPEG streams and HTTP views."""

from fer_async.server.app import create_app

__all__ = ["create_app"]
