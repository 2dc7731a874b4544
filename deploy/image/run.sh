#!/usr/bin/env bash
# Runs the image that build.sh made, without a daemon, in the foreground, as root:
#
#   deploy/image/run.sh [BUILDAH-RUN-OPTIONS...] [-- COMMAND...]
#
# A buildah working container of IMAGE runs COMMAND (`fer-async`, the image's CMD, unless given)
# as the image's user, with its environment. chroot isolation has no network namespace of its
# own: the server listens on this host's network, as with `docker run --network host`, on
# FER_HOST:FER_PORT (0.0.0.0:8080 unless --env says otherwise). SIGTERM and SIGINT go to the
# server; the working container is removed when it exits. For example, YuNet mounted read-only:
#
#   deploy/image/run.sh --env FER_PORT=8081 \
#     --volume "$PWD/../shared/models/face_detection_yunet.onnx:/models/yunet.onnx:ro" \
#     --env FER_DETECTOR_MODEL=/models/yunet.onnx
#
# Environment: IMAGE [localhost/fer-async:<version>], STORAGE_DRIVER [vfs], ISOLATION [chroot].
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
IMAGE=${IMAGE:-localhost/fer-async:$VERSION}
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
ISOLATION=${ISOLATION:-chroot}
buildah() { command buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

options=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  options+=("$1")
  shift
done
[ $# -eq 0 ] || shift
[ $# -gt 0 ] || set -- fer-async

container=$(buildah from --pull=never "$IMAGE")
trap 'buildah rm "$container" >/dev/null' EXIT
# Not through the function: in the background it would be a subshell, and signals must reach buildah.
command buildah --storage-driver "$STORAGE_DRIVER" run --isolation "$ISOLATION" "${options[@]}" "$container" -- "$@" &
server=$!

# buildah run answers SIGTERM by killing its command outright. The server's clean stop
# (WebSockets closed with 1001, exit 0) needs the signal itself, so it goes to the command: the
# first process below buildah that is not buildah's own (buildah-chroot-runtime, -exec). Always
# SIGTERM: a background job of a script starts with SIGINT ignored, and so does the server.
command_pid() {
  local pid=$1 child
  while child=$(cat /proc/"$pid"/task/*/children 2>/dev/null | awk '{print $1; exit}') && [ -n "$child" ]; do
    case "$(tr '\0' ' ' <"/proc/$child/cmdline")" in
      buildah*) pid=$child ;;
      *) echo "$child" && return 0 ;;
    esac
  done
  return 1
}
stop() {
  local target
  target=$(command_pid "$server") || target=$server
  kill -TERM "$target" 2>/dev/null || true
}
trap stop TERM INT
status=0
wait "$server" || status=$?
# A signal interrupts the first wait; the second one waits for the server to finish stopping.
if kill -0 "$server" 2>/dev/null; then
  status=0
  wait "$server" || status=$?
fi
exit "$status"
