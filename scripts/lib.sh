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

# Builds every guest (example functions and test programs) once and copies them, with the
# sample inputs, to $CELLA_GUESTS_DIR.
build_guests() {
    ensure_wasm_targets
    step "building guests into $CELLA_GUESTS_DIR"
    local target="$CARGO_TARGET_DIR/guests"
    (
        cd "$ROOT/guests"
        cargo build --locked --release --target wasm32-wasip1 --target-dir "$target" \
            -p brotli-fn -p thumbnail -p test-programs
        cargo build --locked --release --target wasm32-wasip2 --target-dir "$target" \
            -p hello-http
    )
    mkdir -p "$CELLA_GUESTS_DIR"
    local p1="$target/wasm32-wasip1/release" p2="$target/wasm32-wasip2/release"
    cp "$p1"/brotli.wasm "$p1"/thumbnail.wasm "$CELLA_GUESTS_DIR/"
    for program in loop-forever memory-bomb output-bomb capabilities counter exit-fail echo; do
        cp "$p1/$program.wasm" "$CELLA_GUESTS_DIR/"
    done
    cp "$p2/hello-http.wasm" "$CELLA_GUESTS_DIR/"
    cp "$ROOT/guests/samples/gradient.png" "$CELLA_GUESTS_DIR/sample.png"
}
