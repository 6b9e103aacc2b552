#!/usr/bin/env bash
# Prepares a fresh machine for building, testing and running flumen;
# idempotent, each step is skipped when already done:
#   1. Debian packages, installed with apt-get when missing: libclang-dev
#      (the rocksdb crate's bindgen), libssl-dev + pkg-config (TLS to
#      Cassandra), a JDK 17 (openjdk-17-jdk-headless: Cassandra 5.0 runs on
#      Java 11 or 17 only, Kafka 4 needs 17+) and Maven;
#   2. the server jars, Apache Kafka 4.4.0 and Apache Cassandra 5.0.8 with
#      their runtime dependencies, copied from Maven Central by
#      tests/stack/pom.xml into ~/.cache/flumen/stack (about 110 MB; plus
#      ~140 MB in ~/.m2), each server on its own classpath.
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

# A JDK 17 where the testkit looks for one (tests/src/stack/install.rs).
have_java17() {
    local home
    for home in "${FLUMEN_JAVA_HOME:-}" "${JAVA_HOME:-}" /usr/lib/jvm/*; do
        [[ -n "$home" && -x "$home/bin/java" && -f "$home/release" ]] || continue
        if grep -qE '^JAVA_VERSION="17[."]' "$home/release"; then
            return 0
        fi
    done
    return 1
}

missing=()
have_libclang || missing+=(libclang-dev)
have_openssl || missing+=(libssl-dev pkg-config)
have_java17 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "bootstrap: libclang, OpenSSL headers, JDK 17 and Maven present"
else
    echo "bootstrap: installing ${missing[*]}"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    have_libclang || { echo "bootstrap: libclang still missing after apt-get" >&2; exit 1; }
    have_openssl || { echo "bootstrap: OpenSSL headers still missing after apt-get" >&2; exit 1; }
    have_java17 || { echo "bootstrap: JDK 17 still missing after apt-get" >&2; exit 1; }
    command -v mvn >/dev/null || { echo "bootstrap: mvn still missing after apt-get" >&2; exit 1; }
fi

# The server jars (skipped when present; see tests/stack/pom.xml).
stack_dir="${FLUMEN_STACK_DIR:-$HOME/.cache/flumen/stack}"
pinned() { sed -n "s|.*<$1>\(.*\)</$1>.*|\1|p" tests/stack/pom.xml | head -1; }
kafka="$(pinned kafka.version)"
cassandra="$(pinned cassandra.version)"
if compgen -G "$stack_dir/kafka-$kafka/kafka_2.13-*.jar" >/dev/null &&
    compgen -G "$stack_dir/cassandra-$cassandra/cassandra-all-*.jar" >/dev/null; then
    echo "bootstrap: Kafka $kafka and Cassandra $cassandra jars present in $stack_dir"
else
    echo "bootstrap: fetching Kafka $kafka and Cassandra $cassandra jars from Maven Central into $stack_dir"
    mvn -B -q -Dstyle.color=never -f tests/stack/pom.xml package "-Dstack.dir=$stack_dir"
fi
