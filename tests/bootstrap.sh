#!/usr/bin/env bash
# Prepares a fresh machine for building and testing flumen; idempotent, each
# step is skipped when already done:
#   1. libclang, which the rocksdb crate's build (bindgen) needs: Debian's
#      libclang-dev, installed with apt-get when no libclang is found;
#   2. the pinned dev broker, Tansu 0.6.0 (cargo install, once, ~15 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

have_libclang() {
    if [[ -n "${LIBCLANG_PATH:-}" ]] && compgen -G "${LIBCLANG_PATH}/libclang*.so*" >/dev/null; then
        return 0
    fi
    ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so' && return 0
    compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null
}

if have_libclang; then
    echo "bootstrap: libclang present"
else
    echo "bootstrap: installing libclang-dev (needed to build RocksDB bindings)"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libclang-dev >/dev/null
    have_libclang || { echo "bootstrap: libclang still missing after apt-get" >&2; exit 1; }
fi

cargo run --locked -q -p flumen-testkit --bin flumen-devstack -- install
