#!/usr/bin/env bash
# Builds the conformance images with a Docker engine and no registry at all
# (docs/images.md). An image is rebuilt only when its inputs changed: the hash
# of everything that goes into it is kept as the image label polystream.inputs.
#
#   scripts/images/build.sh [base|go|python|all]...   (default: all)
#
# Environment:
#   FORCE=1               rebuild the images named even when their inputs are
#                         unchanged (the Debian base only when `base` is named)
#   DEBIAN_MIRROR=URL     mirror for debootstrap (default: the one apt uses here)
#   GO_BASE_IMAGE=IMG     base of polystream/go:dev (default scratch)
#   PYTHON_BASE_IMAGE=IMG base of polystream/python:dev
#                         (default polystream/debian-python:bookworm; the base
#                         image is built only when this default is used)
#   PYTHON_PIP_INSTALL=.. what pip installs on another base (default for a base
#                         other than ours: "grpcio>=1.51 protobuf>=3.20,<5")
set -euo pipefail
cd "$(dirname "$0")/../.."
export DOCKER_BUILDKIT=0

BASE_IMAGE_NAME=polystream/debian-python:bookworm
GO_IMAGE=polystream/go:dev
PYTHON_IMAGE=polystream/python:dev
GO_BASE_IMAGE=${GO_BASE_IMAGE:-scratch}
PYTHON_BASE_IMAGE=${PYTHON_BASE_IMAGE:-$BASE_IMAGE_NAME}
if [ "$PYTHON_BASE_IMAGE" = "$BASE_IMAGE_NAME" ]; then
  PYTHON_PIP_INSTALL=${PYTHON_PIP_INSTALL:-}
else
  PYTHON_PIP_INSTALL=${PYTHON_PIP_INSTALL-grpcio>=1.51 protobuf>=3.20,<5}
fi
SUITE=bookworm
# What the Python image needs from Debian (the server also uses sqlite3 from
# the standard library, which libpython3.11-stdlib brings).
BASE_PACKAGES=python3,python3-grpcio,python3-protobuf
LABEL_KEY=polystream.inputs
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}

log() { printf 'images: %s\n' "$*" >&2; }

# hash_inputs: sha256 over stdin (a stream of names and contents).
hash_inputs() { sha256sum | cut -c1-32; }

# tree_stream PATH...: every regular file under PATH (sorted), name and content.
tree_stream() {
  find "$@" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' ! -path '*/.pytest_cache/*' -print0 \
    | LC_ALL=C sort -z | while IFS= read -r -d '' f; do printf '%s\n' "$f"; cat "$f"; done
}

current_label() { # image -> its input hash, or "" if it does not exist
  docker image inspect -f "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$1" 2>/dev/null || true
}

up_to_date() { # image hash [force]
  [ "${3:-${FORCE:-0}}" != 1 ] && [ "$(current_label "$1")" = "$2" ]
}

timed() { # image command...: runs it quietly (its output shown on failure), times
  # it, and removes the image's previous version unless a container still uses it
  local start=$SECONDS out old new
  old=$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true)
  out=$(mktemp)
  if ! "${@:2}" >"$out" 2>&1; then
    cat "$out" >&2; rm -f "$out"
    log "$1 failed"; exit 1
  fi
  rm -f "$out"
  new=$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true)
  if [ -n "$old" ] && [ "$old" != "$new" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
  log "$1 built in $((SECONDS - start))s"
}

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  # deb822 sources first (URIs: line of a stanza with Suites: bookworm), then one-line ones.
  uri=$(awk '/^URIs:/{u=$2} /^Suites:/{ if ($0 ~ /(^|[ \t])bookworm([ \t]|$)/ && u != "") { print u; exit } }' \
          /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '$1=="deb" && $0 ~ / bookworm / { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base() { # [force]: 0 when the Python image only needs a base
  local mirror hash force=${1:-${FORCE:-0}}
  mirror=$(debian_mirror)
  hash=$( { printf 'suite=%s\npackages=%s\nmirror=%s\n' "$SUITE" "$BASE_PACKAGES" "$mirror"; cat scripts/images/debian-base.sh; } | hash_inputs)
  if up_to_date "$BASE_IMAGE_NAME" "$hash" "$force"; then log "$BASE_IMAGE_NAME is up to date"; return; fi
  log "building $BASE_IMAGE_NAME with debootstrap from $mirror"
  timed "$BASE_IMAGE_NAME" bash scripts/images/debian-base.sh "$BASE_IMAGE_NAME" "$SUITE" "$mirror" "$BASE_PACKAGES" "$LABEL_KEY=$hash"
}

# stage_go DIR: the Go image's build context (Dockerfile, static binaries, rootfs).
stage_go() {
  local ctx=$1
  mkdir -p "$ctx/data" "$ctx/rootfs/tmp"
  chmod 0755 "$ctx/data"; chmod 1777 "$ctx/rootfs/tmp"
  cp conformance/images/go/Dockerfile "$ctx/Dockerfile"
  CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false -ldflags='-s -w' -o "$ctx/rootfs/polystream" ./go/cmd/polystream
  CGO_ENABLED=0 "$GO" build -trimpath -buildvcs=false -ldflags='-s -w' -o "$ctx/rootfs/polystream-driver" ./go/cmd/polystream-driver
}

build_go() {
  local ctx hash
  ctx=$(mktemp -d /tmp/polystream-go-image.XXXXXX)
  trap 'rm -rf "$ctx"' RETURN
  stage_go "$ctx"
  # The binaries are the inputs (a reproducible -trimpath build of the same
  # sources gives the same bytes), plus the Dockerfile and base image.
  hash=$( { printf 'base=%s\n' "$GO_BASE_IMAGE"; (cd "$ctx" && tree_stream .); } | hash_inputs)
  if up_to_date "$GO_IMAGE" "$hash"; then log "$GO_IMAGE is up to date"; return; fi
  log "building $GO_IMAGE FROM $GO_BASE_IMAGE"
  timed "$GO_IMAGE" docker build -t "$GO_IMAGE" --build-arg "BASE_IMAGE=$GO_BASE_IMAGE" \
    --label "$LABEL_KEY=$hash" "$ctx"
}

build_python() {
  local ctx hash base_id=""
  if [ "$PYTHON_BASE_IMAGE" = "$BASE_IMAGE_NAME" ]; then build_base 0; fi
  base_id=$(docker image inspect -f '{{.Id}}' "$PYTHON_BASE_IMAGE" 2>/dev/null || true)
  ctx=$(mktemp -d /tmp/polystream-python-image.XXXXXX)
  trap 'rm -rf "$ctx"' RETURN
  cp conformance/images/python/Dockerfile "$ctx/Dockerfile"
  mkdir -p "$ctx/python"
  # Only the package's sources: no tests, caches or virtualenvs.
  tar -C python --exclude='__pycache__' --exclude='*.pyc' --exclude='.pytest_cache' -cf - polystream \
    | tar -C "$ctx/python" -xf -
  hash=$( { printf 'base=%s@%s\npip=%s\n' "$PYTHON_BASE_IMAGE" "$base_id" "$PYTHON_PIP_INSTALL"; (cd "$ctx" && tree_stream .); } | hash_inputs)
  if up_to_date "$PYTHON_IMAGE" "$hash"; then log "$PYTHON_IMAGE is up to date"; return; fi
  log "building $PYTHON_IMAGE FROM $PYTHON_BASE_IMAGE"
  timed "$PYTHON_IMAGE" docker build -t "$PYTHON_IMAGE" --build-arg "BASE_IMAGE=$PYTHON_BASE_IMAGE" \
    --build-arg "PIP_INSTALL=$PYTHON_PIP_INSTALL" \
    --label "$LABEL_KEY=$hash" "$ctx"
}

for what in "${@:-all}"; do
  case "$what" in
    base) build_base ;;
    go) build_go ;;
    python) build_python ;;
    all) build_go; build_python ;;
    *) echo "build.sh: unknown image '$what' (base, go, python, all)" >&2; exit 2 ;;
  esac
done
