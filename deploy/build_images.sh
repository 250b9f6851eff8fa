#!/usr/bin/env bash
# Build the embedder, head and gateway images with podman, from a local Debian bookworm base made
# with debootstrap: for hosts that reach PyPI but no image registry (python:3.11-slim cannot be
# pulled). Run as root from anywhere:
#   bash deploy/build_images.sh                 # base (when absent) + all three images
#   bash deploy/build_images.sh head gateway    # only these images
# Environment:
#   POLYHEAD_BASE_IMAGE   build FROM this instead (e.g. the default python:3.11.14-slim-bookworm@sha256:...
#                         of the Dockerfiles, where a registry is reachable); then no base is made here
#   POLYHEAD_REBUILD_BASE=1  remake the local base even when it exists (it is cached in podman's store)
#   POLYHEAD_IMAGE_TAG    default: the package version (the tag docker-compose.yml and deploy/k8s use)
#   POLYHEAD_CA_BUNDLE    CA bundle the builds' pip trusts (default: this host's
#                         /etc/ssl/certs/ca-certificates.crt, so a TLS-inspecting proxy trusted here works
#                         in the builds too); it is mounted during RUN steps only, never stored in an image
#   DEBIAN_MIRROR         default http://deb.debian.org/debian
# The podman flags below are what a restricted sandbox (gVisor) needs: runc rather than crun (crun's
# cgroup setup is refused), rlimits lowered rather than raised, chroot isolation and the host's
# network for the build steps. They are harmless on an ordinary host.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' polyhead/__init__.py)
TAG=${POLYHEAD_IMAGE_TAG:-$VERSION}
LOCAL_BASE=localhost/polyhead/base:bookworm
BASE=${POLYHEAD_BASE_IMAGE:-$LOCAL_BASE}
CA_BUNDLE=${POLYHEAD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGES=("$@")
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=(embedder head gateway)

PODMAN=(podman)
command -v runc >/dev/null && PODMAN+=(--runtime runc)
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

log() { printf '[build_images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

make_base() {
  # Debian's own python3.11 (bookworm), venv support and CA certificates; security updates applied.
  command -v debootstrap >/dev/null || { log "debootstrap is missing: apt-get install debootstrap"; exit 1; }
  rootfs=$(mktemp -d /var/tmp/polyhead-base.XXXXXX)
  trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
  log "debootstrap bookworm into $rootfs (mirror $MIRROR)"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
  chroot "$rootfs" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade && apt-get clean' \
    >>"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old "$rootfs.log"
  tar --numeric-owner -C "$rootfs" -c . | "${PODMAN[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --message "Debian bookworm minbase + python3.11 (debootstrap, deploy/build_images.sh)" - "$LOCAL_BASE" >/dev/null
  rm -rf "$rootfs"
  log "base image $LOCAL_BASE made"
}

if [ "$BASE" = "$LOCAL_BASE" ]; then
  if [ "${POLYHEAD_REBUILD_BASE:-0}" = 1 ] || ! "${PODMAN[@]}" image exists "$LOCAL_BASE"; then
    make_base
  else
    log "base image $LOCAL_BASE present (POLYHEAD_REBUILD_BASE=1 remakes it)"
  fi
fi

BUILD_MOUNTS=()
[ -f "$CA_BUNDLE" ] && BUILD_MOUNTS+=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")

build_one() {  # IMAGE LOG
  local image=$1 dockerfile=deploy/$1.Dockerfile start
  start=$(date +%s)
  # --format docker keeps the HEALTHCHECK (the OCI image format has no field for it).
  "${PODMAN[@]}" build --format docker --isolation chroot --network host "${ULIMITS[@]}" "${BUILD_MOUNTS[@]}" \
    --build-arg "BASE_IMAGE=$BASE" -f "$dockerfile" --ignorefile "$dockerfile.dockerignore" \
    --label "org.opencontainers.image.version=$VERSION" -t "polyhead/$image:$TAG" . >"$2" 2>&1 || return 1
  log "polyhead/$image:$TAG built in $(( $(date +%s) - start )) s"
}

# The builds run side by side (POLYHEAD_BUILD_PARALLEL=0: one after the other): mostly downloads and
# unpacking, so a cold build of all three takes little more than the embedder's alone.
LOGS=$(mktemp -d /var/tmp/polyhead-build-logs.XXXXXX)
declare -A PIDS
for image in "${IMAGES[@]}"; do
  [ -f "deploy/$image.Dockerfile" ] || { log "no deploy/$image.Dockerfile"; exit 2; }
  log "building polyhead/$image:$TAG from $BASE (log: $LOGS/$image.log)"
  if [ "${POLYHEAD_BUILD_PARALLEL:-1}" = 1 ]; then
    build_one "$image" "$LOGS/$image.log" &
    PIDS[$image]=$!
  else
    build_one "$image" "$LOGS/$image.log" || { tail -40 "$LOGS/$image.log" >&2; log "polyhead/$image failed"; exit 1; }
  fi
done
failed=0
for image in "${!PIDS[@]}"; do
  wait "${PIDS[$image]}" || { tail -40 "$LOGS/$image.log" >&2; log "polyhead/$image failed"; failed=1; }
done
[ "$failed" = 0 ] && rm -rf "$LOGS"
exit "$failed"
