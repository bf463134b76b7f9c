#!/usr/bin/env bash
# Build the image: with docker where a Docker engine runs, otherwise with podman (installed with apt-get when
# missing and running as root), whose base image is made from Debian packages with debootstrap, so no image
# registry is needed. Used by `make image`, batch/deploy.sh and tests/test_image.py.
#
#   docker/build.sh [--target node|partition|join|update|impressions] [--tag NAME:TAG]
# Environment: ENGINE=docker|podman (default: docker if `docker info` works), BASE_IMAGE=IMAGE|debootstrap
# (default: debootstrap with podman, the Dockerfile's own default with docker).
# Prints the engine command line to reuse for run/push/login as its last line (with podman:
# `env CONTAINERS_CONF=... podman --root ... --storage-driver overlay --runtime runc`).
set -euo pipefail
cd "$(dirname "$0")/.."

target=impressions
tag=impressions:latest
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    *) echo "usage: docker/build.sh [--target T] [--tag NAME:TAG]" >&2; exit 2 ;;
  esac
done

if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi

if [ "$ENGINE" = podman ]; then
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing podman, runc and debootstrap with apt-get" >&2
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >&2
    else
      echo "docker/build.sh: no Docker engine, and podman, runc or debootstrap is missing (install them)" >&2
      exit 2
    fi
  fi
  # crun (podman's default runtime) fails on hosts without rlimit/cgroup rights; runc works once podman's
  # default ulimits are off. Storage: overlay where the kernel allows it (a build takes ~2 min), else vfs, which
  # works anywhere but copies the whole image for every layer (~8 min). As root, a store of our own, so a
  # store the machine already has (with another driver) is left alone.
  conf="${XDG_CONFIG_HOME:-$HOME/.config}/impressions/containers.conf"
  mkdir -p "$(dirname "$conf")"
  printf '[containers]\ndefault_ulimits = []\n' > "$conf"
  export CONTAINERS_CONF="$conf"
  driver=${STORAGE_DRIVER:-}
  store() {  # as root: a store per driver, under our own name
    if [ "$(id -u)" = 0 ]; then echo "--root /var/lib/containers/impressions-$1 --runroot /run/impressions-containers-$1"; fi
  }
  if [ -z "$driver" ]; then
    # shellcheck disable=SC2046
    if podman $(store overlay) --storage-driver overlay --runtime runc info >/dev/null 2>&1; then driver=overlay
    else driver=vfs; fi
  fi
  # shellcheck disable=SC2207
  run=(podman $(store "$driver") --storage-driver "$driver" --runtime runc)
  BASE_IMAGE=${BASE_IMAGE:-debootstrap}
else
  run=(docker)
fi

build_args=()
if [ "${BASE_IMAGE:-}" = debootstrap ]; then
  base=localhost/impressions-base:bookworm
  if ! "${run[@]}" image exists "$base" 2>/dev/null; then
    echo "making the base image $base with debootstrap" >&2
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    chmod 755 "$rootfs"  # otherwise / is 0700 in the image and the non-root user can start nothing
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    mirror=${mirror:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
      "${mirror:-http://deb.debian.org/debian}" >&2
    tar -C "$rootfs" -c . | "${run[@]}" import - "$base" >&2
  fi
  build_args+=(--build-arg "BASE_IMAGE=$base")
elif [ -n "${BASE_IMAGE:-}" ]; then
  build_args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
fi

net=()
if [ "$ENGINE" = podman ]; then
  # pip and apt inside the build reach the package index as the host does (its network and CA bundle)
  net=(--network host -v /etc/ssl/certs:/etc/ssl/certs:ro)
fi
"${run[@]}" build "${net[@]}" "${build_args[@]}" --target "$target" -f docker/Dockerfile -t "$tag" . >&2
if [ "$ENGINE" = podman ]; then
  echo "env CONTAINERS_CONF=$CONTAINERS_CONF ${run[*]}"
else
  echo "${run[*]}"
fi
