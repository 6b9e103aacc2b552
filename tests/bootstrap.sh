#!/usr/bin/env bash
# Prepares a fresh machine for building and testing flumen; idempotent, each
# step is skipped when already done:
#   1. libclang, which the rocksdb crate's build (bindgen) needs, and the
#      OpenSSL headers for TLS to Cassandra: Debian's libclang-dev, libssl-dev
#      and pkg-config, installed with apt-get when missing;
#   2. the pinned dev broker, Tansu 0.6.0 (cargo install, once, ~15 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

# libclang itself (libclang.so*, libclang-14.so*), which bindgen loads; not
# libclang-cpp, which some machines have without it.
have_libclang() {
    local dir
    for dir in "${LIBCLANG_PATH:-}" /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu; do
        [[ -n "$dir" ]] || continue
        if compgen -G "${dir}/libclang.so*" >/dev/null || compgen -G "${dir}/libclang-[0-9]*.so*" >/dev/null; then
            return 0
        fi
    done
    return 1
}

have_openssl() {
    command -v pkg-config >/dev/null && pkg-config --exists openssl
}

missing=()
have_libclang || missing+=(libclang-dev)
have_openssl || missing+=(libssl-dev pkg-config)
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "bootstrap: libclang and OpenSSL headers present"
else
    echo "bootstrap: installing ${missing[*]} (RocksDB bindings, TLS to Cassandra)"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    have_libclang || { echo "bootstrap: libclang still missing after apt-get" >&2; exit 1; }
    have_openssl || { echo "bootstrap: OpenSSL headers still missing after apt-get" >&2; exit 1; }
fi

cargo run --locked -q -p flumen-testkit --bin flumen-devstack -- install
