# Shared set-up for cella's scripts: sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Builds are reused across runs and clones: keep them outside the checkout unless told otherwise.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cella/target}"
export CELLA_GUESTS_DIR="${CELLA_GUESTS_DIR:-$ROOT/guests/dist}"

step() { printf '\n==> %s\n' "$*" >&2; }

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo not found: install Rust with rustup (https://rustup.rs), then run this again" >&2
        exit 1
    fi
}

ensure_wasm_targets() {
    local installed missing=()
    installed="$(rustup target list --installed 2>/dev/null || true)"
    for target in wasm32-wasip1 wasm32-wasip2; do
        grep -qx "$target" <<<"$installed" || missing+=("$target")
    done
    if ((${#missing[@]})); then
        step "installing Rust targets: ${missing[*]}"
        rustup target add "${missing[@]}"
    fi
}

# Debian packages, installed when missing (needs root, or sudo).
ensure_debian_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$package")
    done
    ((${#missing[@]})) || return 0
    step "installing Debian packages: ${missing[*]}"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# A cluster runs on NATS with JetStream: the tests and the cluster demo start a real server.
ensure_nats() {
    ensure_debian_packages nats-server
}

# The JavaScript plug-in embeds QuickJS, which is C: it needs clang with a WebAssembly
# back end and Debian's wasi-libc. Debian keeps wasi-libc's headers and libraries under
# wasm32-wasi; clang looks for a sysroot, so one is made of links, outside the checkout.
ensure_c_for_wasm() {
    ensure_debian_packages clang-19 lld-19 llvm-19 libclang-rt-19-dev-wasm32 wasi-libc
    WASI_SYSROOT="$HOME/.cache/cella/wasi-sysroot"
    mkdir -p "$WASI_SYSROOT/lib"
    ln -sfn /usr/include/wasm32-wasi "$WASI_SYSROOT/include"
    ln -sfn /usr/lib/wasm32-wasi "$WASI_SYSROOT/lib/wasm32-wasip1"
    # rquickjs-sys would otherwise download a WASI SDK.
    export RQUICKJS_SYS_NO_WASI_SDK=1
    export CC_wasm32_wasip1=clang-19 AR_wasm32_wasip1=llvm-ar-19
    export CFLAGS_wasm32_wasip1="--sysroot=$WASI_SYSROOT"
}

# Builds every guest (example functions and test programs) once and copies them, with the
# sample inputs, to $CELLA_GUESTS_DIR.
build_guests() {
    ensure_wasm_targets
    ensure_c_for_wasm
    step "building guests into $CELLA_GUESTS_DIR"
    local target="$CARGO_TARGET_DIR/guests"
    (
        cd "$ROOT/guests"
        cargo build --locked --release --target wasm32-wasip1 --target-dir "$target" \
            -p brotli-fn -p thumbnail -p test-programs -p quickjs-plugin -p primes-plugin
        cargo build --locked --release --target wasm32-wasip2 --target-dir "$target" \
            -p hello-http -p visits-http
    )
    mkdir -p "$CELLA_GUESTS_DIR"
    local p1="$target/wasm32-wasip1/release" p2="$target/wasm32-wasip2/release"
    cp "$p1"/brotli.wasm "$p1"/thumbnail.wasm "$p1"/quickjs.wasm "$p1"/primes.wasm "$CELLA_GUESTS_DIR/"
    for program in loop-forever memory-bomb output-bomb capabilities counter exit-fail echo state host-calls log-flood; do
        cp "$p1/$program.wasm" "$CELLA_GUESTS_DIR/"
    done
    cp "$p2/hello-http.wasm" "$p2/visits-http.wasm" "$CELLA_GUESTS_DIR/"
    cp "$ROOT/guests/samples/gradient.png" "$CELLA_GUESTS_DIR/sample.png"
    cp "$ROOT/guests/samples/hello.js" "$CELLA_GUESTS_DIR/hello.js"
}
