#!/usr/bin/env bash
# Installs what the build and the tests need, idempotently. Safe to run again and again:
# it only calls apt-get when something is missing.
#   - libclang: rocksdb's bindgen (librocksdb-sys) needs it at build time.
#   - protoc is not needed: the proto crate uses a vendored one.
#   - iproute2 (`ip netns`) and nftables (`nft`): the Jepsen-style suite's partitions.
set -euo pipefail

need=()
# libclang.so is what bindgen dlopens; libclang-dev provides the unversioned symlink.
if ! ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so* >/dev/null 2>&1; then
  need+=(libclang-dev)
fi
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v cargo-nextest >/dev/null 2>&1 || cargo nextest --version >/dev/null 2>&1 || NEED_NEXTEST=1

if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "${NEED_NEXTEST:-0}" = 1 ]; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
echo "setup: ok" >&2
