"""fer_async: real-time facial expression recognition as an async service."""

from fer_async.labels import EMOTIONS

__all__ = ["EMOTIONS", "__version__"]
__version__ = "0.1.0"
