#!/usr/bin/env bash
# Installs the Debian 12 packages forq needs to build, test and run.
# Only missing packages are installed; uses sudo when not root.
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler libprotobuf-dev
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev prometheus-cpp-dev
  libsqlite3-dev sqlite3 prometheus
  libspdlog-dev libcli11-dev libboost-dev libssl-dev clang-format curl
  clang-14 libclang-rt-14-dev clang-tidy-14
  nlohmann-json3-dev python3-yaml postgresql-15 libpq-dev libjemalloc-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "forq: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
