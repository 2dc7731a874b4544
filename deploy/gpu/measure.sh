#!/usr/bin/env bash
# The GPU path, measured on a machine with an NVIDIA GPU and no internet (deploy/gpu/README.md).
#
#   deploy/gpu/measure.sh [WHEELS_DIR...]     # from the repository root; ~7 minutes
#
# WHEELS_DIR holds onnxruntime-gpu's wheel (and aiohttp-jinja2's when the machine lacks it),
# whole or split into NAME.whl.part-NN pieces, possibly spread over several folders
# (default: every .gpu-wheels*/ folder of the repository root); SHA256SUMS beside them is checked.
# YuNet's face_detection_yunet*.onnx there is the detector (else Haar: that machine cannot download it).
# Nothing is installed into the machine's Python: the wheels go to a folder on PYTHONPATH.
#
# Prints, and writes to $OUT (default /tmp/fer-gpu-out): gpu-measure.log, the whole output, and
# gpu-results.jsonl, one line per run: {"run": LABEL, "result": the bench's JSON}.
# DURATION (seconds per measured run, default 10) and REQUIRE_GPU=0 (go on without CUDA: a dry
# run of this script on a CPU machine) may be set.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
DURATION=${DURATION:-10}
WARMUP=3
OUT=${OUT:-/tmp/fer-gpu-out}
STAGE=/tmp/fer-gpu-wheels
SITE=/tmp/fer-gpu-site
mkdir -p "$OUT" "$STAGE"
LOG=$OUT/gpu-measure.log
RESULTS=$OUT/gpu-results.jsonl
: >"$RESULTS"
exec > >(tee "$LOG") 2>&1

say() { printf '\n=== %s\n' "$*"; }

say "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
echo "cores: $(nproc); $($PY --version) at $(command -v "$PY")"

say "wheels"
if [ $# -ge 1 ]; then sources=("$@"); else mapfile -t sources < <(ls -d .gpu-wheels*/ 2>/dev/null || true); fi
[ ${#sources[@]} -gt 0 ] || { echo "no wheel folder: see deploy/gpu/README.md"; exit 2; }
find "${sources[@]}" -maxdepth 1 \( -name '*.whl' -o -name SHA256SUMS -o -name 'face_detection_yunet*.onnx' \) \
  -exec cp {} "$STAGE"/ \;
# Split wheels: NAME.whl.part-00, -01, ... in any of the folders, joined in the order of their names.
for first in $(find "${sources[@]}" -maxdepth 1 -name '*.whl.part-00'); do
  name=$(basename "${first%.part-00}")
  find "${sources[@]}" -maxdepth 1 -name "$name.part-*" -printf '%f %p\n' | sort | cut -d' ' -f2 | xargs cat >"$STAGE/$name"
done
if [ -f "$STAGE/SHA256SUMS" ]; then (cd "$STAGE" && sha256sum --check --ignore-missing SHA256SUMS); fi
ls -la "$STAGE"/*.whl
# YuNet's file, as the server uses it; without it (no internet there) the detector would be Haar.
yunet=$(ls "$STAGE"/face_detection_yunet*.onnx 2>/dev/null | head -n 1 || true)
detector=()
if [ -n "$yunet" ]; then detector=(--detector-model "$yunet"); else echo "no face_detection_yunet*.onnx carried: Haar detects"; fi
rm -rf "$SITE"
$PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$STAGE"/*.whl
export PYTHONPATH="$SITE:$PWD"
# CUDA's and cuDNN's libraries from NVIDIA's pip packages of this Python (as PyTorch uses them).
nvidia_libs=$($PY -c 'import glob, importlib.util as u, os; s = u.find_spec("nvidia")
print(":".join(d for r in (s.submodule_search_locations if s else []) for d in sorted(glob.glob(os.path.join(r, "*", "lib")))))')
export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

say "the network on CUDA (--device cuda), against the CPU"
$PY - <<'EOF'
import logging, os, sys, time
import numpy as np
import onnxruntime as ort
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from fer_async.model import FacialExpressionModel
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
gpu = FacialExpressionModel(device="cuda", precision="fp32")
cpu = FacialExpressionModel(device="cpu", precision="fp32")
print("cuda model:", gpu.device, gpu.providers, gpu.model_file, "| cpu model:", cpu.device, cpu.providers)
faces = np.random.default_rng(0).integers(0, 256, size=(256, 48, 48), dtype=np.uint8)
print(f"max |GPU - CPU| over 256 faces (flip TTA): {np.abs(gpu.predict(faces) - cpu.predict(faces)).max():.2e}")
for n in (1, 16, 64, 256, 1024):
    x = np.resize(faces, (n, 48, 48))
    for model in (gpu, cpu):
        model.predict(x)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            model.predict(x); runs += 1
        ms = (time.perf_counter() - started) / runs * 1000
        print(f"predict {n:5d} faces (x2 flip TTA) on {model.device}: {ms:8.2f} ms, {n / ms * 1000:10.0f} faces/s")
if gpu.device != "GPU" and os.environ.get("REQUIRE_GPU", "1") != "0":
    sys.exit("CUDA is not usable here (see the warning above): stopping")
EOF

run() {  # LABEL, then the bench's arguments
  local label=$1 file
  shift
  file=$(mktemp)
  say "$label: python -m fer_async.bench $*"
  if timeout 150 $PY -m fer_async.bench --duration "$DURATION" --warmup "$WARMUP" "${detector[@]}" "$@" | tee "$file"; then
    printf '{"run": "%s", "result": %s}\n' "$label" "$(tail -n 1 "$file")" >>"$RESULTS"
  else
    echo "$label: failed or timed out"
  fi
  rm -f "$file"
}

# The compute bound: decode + detect (CPU) + the network, batches of --max-batch frames.
run "raw cpu int8 b16" --raw --device cpu --max-batch 16
for batch in 16 64 256; do run "raw cuda fp32 b$batch" --raw --device cuda --model-precision fp32 --max-batch "$batch"; done

# The server: 16, 64 and 256 WebSocket clients, one frame in flight each.
run "server cpu int8 b16" --sweep 16,64,256 --device cpu --max-batch 16
for batch in 16 64 256; do
  run "server cuda fp32 b$batch" --sweep 16,64,256 --device cuda --model-precision fp32 --max-batch "$batch"
done
# Detection runs on 2 threads per process: 4 workers spread it over more cores, each with the GPU.
run "server cuda fp32 b64 workers4" --sweep 16,64,256 --device cuda --model-precision fp32 --max-batch 64 \
  --server-arg=--workers --server-arg=4

say "Triton Inference Server through --executor"
if command -v tritonserver >/dev/null; then
  repo=$(mktemp -d)
  cp -r deploy/triton/fernet "$repo"/ && mkdir -p "$repo/fernet/1" && cp weights/fernet.onnx "$repo/fernet/1/model.onnx"
  port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  tritonserver --model-repository="$repo" --http-port="$port" --grpc-port=0 --metrics-port=0 >"$OUT/triton.log" 2>&1 &
  triton=$!
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/v2/models/fernet/ready" >/dev/null && break; sleep 0.5; done
  run "server triton b64" --sweep 16,64,256 --max-batch 64 --server-arg=--executor --server-arg="http://127.0.0.1:$port"
  kill -TERM "$triton"
  wait "$triton" || true
else
  echo "skipped: no tritonserver here (this image's 'Triton' is the GPU compiler of PyTorch; Triton Inference"
  echo "Server comes as a container image, nvcr.io/nvidia/tritonserver, which this machine cannot fetch)"
fi

say "results ($RESULTS)"
cat "$RESULTS"
