#!/usr/bin/env bash
# Builds the local base image olive-systems/base:bookworm (Debian bookworm minbase + python3 3.11,
# venv, pip) with debootstrap, for machines that cannot pull an image from a registry.
# Elsewhere, build the accelerator images from a public base instead:
#   python -m olive_systems.images build cpu --base-image python:3.11-slim
# Idempotent: does nothing if the image already exists. Needs root (debootstrap) and a running dockerd.
set -euo pipefail

IMAGE="${BASE_IMAGE_NAME:-olive-systems/base:bookworm}"
SUITE="${SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE exists; nothing to do"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq debootstrap >/dev/null
fi

ROOTFS="$(mktemp -d /tmp/olive-base.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT

start=$(date +%s)
echo "debootstrap $SUITE into $ROOTFS ..."
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -30 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# Smaller image: no apt lists, no docs or man pages.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*

tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
echo "built $IMAGE in $(( $(date +%s) - start )) s"
