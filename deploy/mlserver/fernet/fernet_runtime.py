"""MLServer runtime for fer_async's expression model: the ONNX export through onnxruntime.

Takes `faces` uint8 [N, 48, 48, 1] (grey levels 0..255; the network rescales them itself) and
gives `probabilities` float32 [N, 7] in FER2013 order (angry, disgust, fear, happy, sad, surprise,
neutral). Flip TTA is the client's business: fer_async sends each face and its mirror image in
the same request.

MLServer's adaptive batching (model-settings.json) merges concurrent requests before they get
here; the histograms `fernet_batch_rows` (faces per call) and `fernet_onnx_seconds` on the
metrics port show what it merged and what the network itself cost. They live in
prometheus_client's default registry, the one MLServer serves with `parallel_workers: 0`
(settings.json); its own `mlserver.log()` metrics are not served in that mode (MLServer 1.7.1).
The network runs in a thread: onnxruntime releases the GIL, so the server keeps reading and
batching requests meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri
from prometheus_client import REGISTRY, Histogram

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SECONDS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def _histogram(name: str, description: str, buckets: tuple[float, ...]) -> Histogram:
    existing = REGISTRY._names_to_collectors.get(name)  # a model reloaded in the same process
    if isinstance(existing, Histogram):
        return existing
    return Histogram(name, description, ["model_name"], buckets=buckets)


class FernetOnnx(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings, wellknown_filenames=["model.onnx"])
        options = onnxruntime.SessionOptions()
        threads = os.environ.get("FERNET_THREADS")  # default: onnxruntime's (all cores)
        if threads:
            options.intra_op_num_threads = int(threads)
        self._session = onnxruntime.InferenceSession(path, options, providers=onnxruntime.get_available_providers())
        (model_input,) = self._session.get_inputs()
        self._input_name = model_input.name
        self._output_name = self._session.get_outputs()[0].name
        rows = _histogram("fernet_batch_rows", "faces per model call, after adaptive batching", ROW_BUCKETS)
        seconds = _histogram("fernet_onnx_seconds", "onnxruntime time per model call", SECONDS_BUCKETS)
        self._rows, self._seconds = rows.labels(self.name), seconds.labels(self.name)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        (request_input,) = payload.inputs
        faces = NumpyCodec.decode_input(request_input)
        if faces.dtype != np.uint8 or faces.shape[1:] not in ((48, 48), (48, 48, 1)):
            raise MLServerError(f"faces must be uint8 [N, 48, 48, 1], got {faces.dtype} {faces.shape}")
        started = time.perf_counter()
        feed = {self._input_name: faces.reshape(-1, 48, 48, 1)}
        (probs,) = await asyncio.to_thread(self._session.run, [self._output_name], feed)
        self._rows.observe(len(faces))
        self._seconds.observe(time.perf_counter() - started)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(self._output_name, probs.astype(np.float32))],
        )
