#!/usr/bin/env bash
# Builds the fer_async image without a container daemon or an image registry, as root:
#
#   deploy/image/build.sh [IMAGE]        # IMAGE: localhost/fer-async:<version> unless given
#
# 1. A Debian bookworm base from Debian's own packages (debootstrap --variant=minbase, the
#    content of debian:bookworm-slim), committed as BASE_IMAGE; made once, reused after.
# 2. deploy/Dockerfile on top of it (--build-arg BASE=BASE_IMAGE) with buildah: Debian's python3,
#    the project's wheel built from this checkout, its dependencies from PyPI.
#
# Needs buildah and debootstrap (Debian packages), Debian's mirror and PyPI. Environment:
#   MIRROR            Debian mirror [http://deb.debian.org/debian]
#   SECURITY_MIRROR   Debian security mirror [http://deb.debian.org/debian-security]
#   BASE_IMAGE        the base's name [localhost/fer-async-base:bookworm]
#   STORAGE_DRIVER    buildah's storage driver [vfs: works where overlay mounts are not allowed]
#   ISOLATION         how RUN steps are isolated [chroot: needs no user namespaces]
#   CA_BUNDLE         the CA certificates pip trusts in the build [/etc/ssl/certs/ca-certificates.crt]
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
IMAGE=${1:-localhost/fer-async:$VERSION}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
BASE_IMAGE=${BASE_IMAGE:-localhost/fer-async-base:bookworm}
STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}
ISOLATION=${ISOLATION:-chroot}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
buildah() { command buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "base: $BASE_IMAGE (exists)"
else
  echo "base: making $BASE_IMAGE with debootstrap from $MIRROR"
  rootfs=$(mktemp -d)
  container=""
  cleanup() {
    [ -z "$container" ] || buildah rm "$container" >/dev/null 2>&1 || true
    rm -rf --one-file-system "$rootfs"  # never into a /proc or /dev debootstrap left mounted
  }
  trap cleanup EXIT
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR"
  if findmnt -rn -o TARGET | grep -q "^$rootfs/"; then  # /dev may be the host's, bind-mounted
    echo "debootstrap left file systems mounted under $rootfs: unmount them first" >&2
    exit 1
  fi
  # Security updates reach the image through the Dockerfile's apt-get, as on debian:bookworm-slim.
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
SOURCES
  # What makes debian:bookworm-slim slim: no manuals, docs (but the copyrights) or translations,
  # now or from later packages.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EXCLUDES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
EXCLUDES
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale,groff,lintian}/*
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/dev/*
  container=$(buildah from scratch)
  cp -a "$rootfs/." "$(buildah mount "$container")/"
  buildah umount "$container" >/dev/null
  buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.description="Debian bookworm minbase, debootstrap from $MIRROR" "$container"
  buildah commit --rm "$container" "$BASE_IMAGE"
  container=""
fi

# docker format, not OCI: it keeps the Dockerfile's HEALTHCHECK. pip in the build trusts what
# this host trusts (a TLS-inspecting proxy's CA included), as a build secret, not in the image.
secret=()
[ ! -f "$CA_BUNDLE" ] || secret=(--secret "id=ca,src=$CA_BUNDLE")
buildah bud --isolation "$ISOLATION" --format docker --build-arg BASE="$BASE_IMAGE" "${secret[@]}" \
  -f deploy/Dockerfile -t "$IMAGE" .
buildah images "$IMAGE"
