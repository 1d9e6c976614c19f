#!/usr/bin/env bash
# Installs what building, running and testing Slipway need, when it is missing (Debian/Ubuntu, as root
# or with sudo). Safe to run again: it only installs what is absent.
#   scripts/install-deps.sh build    C libraries and code generators
#   scripts/install-deps.sh demo     + git, buildah, skopeo, docker-registry, busybox-static; grpcio for health checks
#   scripts/install-deps.sh test     + Python test peers (grpcio, h2, pytest) and load tools
set -euo pipefail

what=${1:-build}
APT_BUILD=(pkg-config libnghttp2-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev libprotoc-dev openssl)
# What the builder runs: git, buildah, skopeo, the distribution registry (with apache2-utils'
# htpasswd for its bcrypt password file), and busybox-static for the offline base image
# (scripts/seed-base-images.sh); iproute2 and nftables isolate the apps and builds.
APT_RUN=(git curl buildah skopeo docker-registry apache2-utils busybox-static runc umoci nginx-light iproute2 nftables)
# e2fsprogs and util-linux: the chaos suite's loop-mounted data filesystem (mkfs.ext4, fallocate).
APT_TEST=(nghttp2-client python3-pip openssh-server pebble e2fsprogs util-linux)
PIP_TEST=(grpcio grpcio-health-checking grpcio-reflection grpcio-tools h2 pytest kubernetes-validate cryptography)

need=()
packages=("${APT_BUILD[@]}")
[ "$what" = test ] || [ "$what" = demo ] && packages+=("${APT_RUN[@]}")
[ "$what" = test ] && packages+=("${APT_TEST[@]}")

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# python3-pip is only needed when no pip is on the machine.
if python3 -m pip --version >/dev/null 2>&1; then
  missing=("${missing[@]/python3-pip}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "$what" = test ] || [ "$what" = demo ]; then
  need=()
  python3 -c "import grpc" 2>/dev/null || need+=(grpcio)
  python3 -c "import grpc_health.v1" 2>/dev/null || need+=(grpcio-health-checking)
fi
if [ "$what" = test ]; then
  python3 -c "import grpc_reflection.v1alpha" 2>/dev/null || need+=(grpcio-reflection)
  python3 -c "import grpc_tools.protoc" 2>/dev/null || need+=(grpcio-tools)
  python3 -c "import h2" 2>/dev/null || need+=(h2)
  python3 -c "import pytest" 2>/dev/null || need+=(pytest)
  python3 -c "import kubernetes_validate" 2>/dev/null || need+=(kubernetes-validate)
  python3 -c "import cryptography" 2>/dev/null || need+=(cryptography)
fi
if [ "$what" = test ] || [ "$what" = demo ]; then
  if [ "${#need[@]}" -gt 0 ]; then
    echo "installing Python test peers: ${need[*]}"
    python3 -m pip install -q --root-user-action=ignore "${need[@]}" 2>/dev/null || python3 -m pip install -q --break-system-packages "${need[@]}"
  fi
fi

command -v swift >/dev/null || [ -x /opt/swift/usr/bin/swift ] || { echo "error: Swift 6 is required (swift not on PATH, nor /opt/swift)" >&2; exit 1; }
