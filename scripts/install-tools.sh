#!/usr/bin/env bash
# Installs what the build and tests need, and only what is missing, so every
# make target can call it. Everything comes from Debian packages or the Go
# module proxy (no PyPI, no container registry).
#   install-tools.sh protoc   protoc, grpc_python_plugin, protoc-gen-go(-grpc)
#   install-tools.sh python   grpcio, protobuf, pytest for /usr/bin/python3
#   install-tools.sh grpcurl  grpcurl
#   install-tools.sh all      everything above
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO=v1.36.12       # google.golang.org/protobuf
PROTOC_GEN_GO_GRPC=v1.6.0    # google.golang.org/grpc/cmd/protoc-gen-go-grpc
GRPCURL=v1.9.4

gobin="$(go env GOPATH)/bin"
apt_updated=""
apt_install() { # installs the Debian packages that are not installed yet
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
go_install() { # go_install BINARY MODULE@VERSION
  local have=""
  [ -x "$gobin/$1" ] && have=$(go version -m "$gobin/$1" 2>/dev/null | awk '$1=="mod"{print $3; exit}')
  [ "$have" = "${2##*@}" ] || GOFLAGS=-mod=mod go install "$2"
}

for what in "${@:-all}"; do
  case "$what" in
    protoc|all)
      apt_install protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
      go_install protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO
      go_install protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC ;;&
    python|all)
      apt_install python3-grpcio python3-protobuf python3-pytest python3-pytest-asyncio ;;&
    grpcurl|all)
      go_install grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL ;;&
    protoc|python|grpcurl|all) ;;
    *) echo "install-tools.sh: unknown set '$what'" >&2; exit 2 ;;
  esac
done
