#!/usr/bin/env bash
# Makes a minimal Debian image with debootstrap and `docker import`, so the
# Python image needs no registry (docs/images.md). Called by build.sh:
#   debian-base.sh IMAGE SUITE MIRROR PACKAGES LABEL=VALUE
set -euo pipefail
image=$1 suite=$2 mirror=$3 packages=$4 label=$5

sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo  # debootstrap and chroot need root
if ! command -v debootstrap >/dev/null && [ ! -x /usr/sbin/debootstrap ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null
fi

root=$(mktemp -d /var/tmp/polystream-rootfs.XXXXXX)
trap '$sudo rm -rf --one-file-system "$root"' EXIT

$sudo env PATH="/usr/sbin:/sbin:$PATH" debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
  tail -n 30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

# Smaller and reproducible enough: no package caches, lists or logs.
$sudo rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
$sudo chroot "$root" python3 -c 'import grpc, google.protobuf, sqlite3; print("python ok, grpcio", grpc.__version__)' >&2

$sudo tar --numeric-owner -C "$root" -cf - . | docker import \
  --change "LABEL $label" \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1' \
  --change 'CMD ["python3"]' \
  - "$image" >/dev/null
