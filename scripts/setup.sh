#!/usr/bin/env bash
# Installs what a fresh Debian machine with the Rust toolchain lacks to build and test Tally.
# Safe to run every time: it only installs what is missing.
set -euo pipefail

missing=()
# RocksDB (rust-rocksdb) builds its C++ sources and generates bindings with bindgen, which loads
# libclang at build time.
if ! dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'install ok installed'; then
  missing+=(libclang-dev)
fi
# The Raft library (raft-rs, `prost-codec`) generates its message types with protoc at build time.
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
# The console's test drives a real headless browser: Debian's chromium, never one downloaded.
[ -x /usr/bin/chromium ] || missing+=(chromium)

if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
  else
    echo "tally setup: missing ${missing[*]}; install them with apt-get (needs root)" >&2
    exit 1
  fi
  echo "tally setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  for component in rustfmt clippy; do
    if ! grep -q "^$component" <<<"$installed"; then
      rustup component add "$component"
    fi
  done
fi
