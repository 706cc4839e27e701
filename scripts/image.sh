#!/usr/bin/env bash
# Build the worker image with whichever builder the machine has; no Docker engine needed.
#
#   scripts/image.sh deps      install buildah (and mmdebstrap for IMAGE_BASE=debian) from Debian's
#                              packages when the machine has no builder (root; idempotent)
#   scripts/image.sh builder   print the builder that would be used (docker, podman or buildah)
#   scripts/image.sh base      build the Debian base (IMAGE_BASE=debian only; see below)
#   scripts/image.sh build     build $IMAGE from the Dockerfile, unchanged (make image)
#
# Environment:
#   IMAGE            tag to build (default ftp-pooler:0.1.0)
#   IMAGE_BUILDER    docker | podman | buildah (default: the first that works, in that order; a
#                    docker CLI without a reachable engine does not count)
#   IMAGE_BASE       official (default): the Dockerfile's own FROM, python:3.11.N-slim from its
#                    registry. debian: where that registry is out of reach, first build a base of
#                    Debian bookworm's python3 (3.11) with mmdebstrap from Debian's packages (about
#                    2 min the first time, reused after), tag it $DEBIAN_BASE_IMAGE and pass it as
#                    the BASE_IMAGE build argument. The Dockerfile is the same either way.
#   BUILD_CA_BUNDLE  a CA bundle on this machine for the build stage's pip (an HTTPS-inspecting
#                    proxy); default: $PIP_CERT when set. Mounted for the build only (podman and
#                    buildah; docker build cannot mount it), never copied into the image.
#
# Images are built in Docker's format, not OCI: OCI has no HEALTHCHECK and would drop it. buildah
# uses chroot isolation and the vfs storage driver, which work without a daemon, user namespaces
# or fuse (a root shell in a plain VM or CI container).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
image=${IMAGE:-ftp-pooler:0.1.0}
base_kind=${IMAGE_BASE:-official}
debian_base=${DEBIAN_BASE_IMAGE:-localhost/ftp-pooler-base:bookworm-python3}
debian_suite=bookworm
cache=$root/.cache/image
ca_bundle=${BUILD_CA_BUNDLE:-${PIP_CERT:-}}
# The bundle is mounted over the base's own bundle path (present in both bases), so the build adds
# no mount point to the image.
ca_in_build=/etc/ssl/certs/ca-certificates.crt

say() { echo "image: $*" >&2; }

builder() {
  if [ -n "${IMAGE_BUILDER:-}" ]; then
    echo "$IMAGE_BUILDER"
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo docker
  elif command -v podman >/dev/null 2>&1 && podman info >/dev/null 2>&1; then
    echo podman
  elif command -v buildah >/dev/null 2>&1; then
    echo buildah
  else
    say "no image builder: install one (Debian: apt-get install buildah), or set IMAGE_BUILDER"
    exit 2
  fi
}

deps() {
  local wanted=()
  if [ -z "${IMAGE_BUILDER:-}" ] && ! builder >/dev/null 2>&1; then wanted+=(buildah); fi
  if [ "$base_kind" = debian ] && ! command -v mmdebstrap >/dev/null 2>&1; then
    wanted+=(mmdebstrap)
  fi
  [ ${#wanted[@]} -eq 0 ] && return
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  say "installing ${wanted[*]} from Debian's packages"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${wanted[@]}" >/dev/null
}

# The command line of each tool, with the options this machine kind needs.
tool() {
  case "$1" in
    buildah) echo "buildah --storage-driver ${STORAGE_DRIVER:-vfs}" ;;
    *) echo "$1" ;;
  esac
}

image_exists() {
  case "$1" in
    buildah) $(tool buildah) inspect --type image "$2" >/dev/null 2>&1 ;;
    *) "$1" image inspect "$2" >/dev/null 2>&1 ;;
  esac
}

# Debian's python3 in a minimal root filesystem, imported as an image. The official image's paths
# differ (/usr/local/bin/python3 there, /usr/bin/python3 here); the Dockerfile calls python3 by
# name and builds its virtualenv from it, so either base works.
build_base() {
  local kind=$1
  if image_exists "$kind" "$debian_base"; then
    say "base $debian_base already built (remove it to rebuild)"
    return
  fi
  command -v mmdebstrap >/dev/null 2>&1 || {
    say "mmdebstrap missing: apt-get install mmdebstrap (root)"
    exit 2
  }
  mkdir -p "$cache"
  local tarball=$cache/base-$debian_suite.tar
  say "building $debian_base from Debian $debian_suite packages (mmdebstrap)"
  mmdebstrap --quiet --variant=apt \
    --include=python3,python3-venv,ca-certificates,netbase,tzdata,passwd \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$debian_suite" "$tarball"
  # The environment the official image sets; a tarball import carries none.
  local path=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  case "$kind" in
    buildah)
      local b ctr
      b=$(tool buildah)
      ctr=$($b from scratch)
      $b add "$ctr" "$tarball" /
      $b config --env "$path" --env LANG=C.UTF-8 --cmd python3 "$ctr"
      $b commit --quiet --rm "$ctr" "$debian_base" >/dev/null
      ;;
    *)
      "$kind" import --change "ENV $path" --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        "$tarball" "$debian_base" >/dev/null
      ;;
  esac
  rm -f "$tarball"
  say "base $debian_base built"
}

build() {
  local kind args=()
  kind=$(builder)
  case "$base_kind" in
    official) ;;
    debian)
      build_base "$kind"
      args+=(--build-arg "BASE_IMAGE=$debian_base")
      ;;
    *)
      say "IMAGE_BASE is official or debian, not $base_kind"
      exit 2
      ;;
  esac
  if [ -n "$ca_bundle" ] && [ "$kind" != docker ]; then
    args+=(--volume "$ca_bundle:$ca_in_build:ro" --build-arg "BUILD_CA_BUNDLE=$ca_in_build")
  fi
  say "building $image with $kind (base: $base_kind)"
  local started=$SECONDS
  case "$kind" in
    buildah) set -- $(tool buildah) bud --isolation chroot --format docker --layers=false ;;
    podman) set -- podman build --format docker ;;
    docker) set -- docker build ;;
    *)
      say "IMAGE_BUILDER is docker, podman or buildah, not $kind"
      exit 2
      ;;
  esac
  if ! "$@" "${args[@]}" --tag "$image" "$root"; then
    [ "$base_kind" = official ] && say "build failed; if the python image's registry is out of" \
      "reach, IMAGE_BASE=debian builds a base from Debian's packages first (README, Deploy)"
    exit 1
  fi
  say "built $image with $kind in $((SECONDS - started)) s"
}

case "${1:-}" in
  deps) deps ;;
  builder) builder ;;
  base) build_base "$(builder)" ;;
  build) build ;;
  *)
    echo "usage: $0 deps|builder|base|build" >&2
    exit 2
    ;;
esac
