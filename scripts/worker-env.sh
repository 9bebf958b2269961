# shellcheck shell=bash
# Environment for wasm32 (Cloudflare Worker) builds of Fluxy.
#
#   . scripts/worker-env.sh        # after scripts/worker-setup has run once
#   "$FLUXY_WORKER_BUILD" --release  # worker-build alone; scripts/worker-build adds wasm-opt
#
# Source this ONLY in a shell or script that builds the worker. Never use it for
# host builds, `cargo test` or `cargo install`: RUSTC_BOOTSTRAP=1 together with
# CARGO_UNSTABLE_BUILD_STD would rebuild std for them too.
#
# Keep this env identical between runs: any change (linker, flags, compiler)
# invalidates the whole wasm target dir and costs a full rebuild of about 1.5 min.
#
# Inputs (all optional):
#   FLUXY_TOOLS_DIR        tools cache       (default $HOME/.cache/fluxy-tools)
#   FLUXY_WASM_TARGET_DIR  wasm target dir   (default $FLUXY_TOOLS_DIR/wasm-target)
#
# The route (`rustup` or `debian`) is read from $FLUXY_TOOLS_DIR/route, which
# scripts/worker-setup writes.

if [ -z "${BASH_VERSION:-}" ]; then
  echo "worker-env.sh: needs bash (source it from bash)" >&2
  return 1 2>/dev/null || exit 1
fi

FLUXY_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FLUXY_REPO_ROOT
export FLUXY_TOOLS_DIR="${FLUXY_TOOLS_DIR:-$HOME/.cache/fluxy-tools}"

if [ ! -r "$FLUXY_TOOLS_DIR/route" ]; then
  echo "worker-env.sh: $FLUXY_TOOLS_DIR/route is missing; run scripts/worker-setup first" >&2
  return 1 2>/dev/null || exit 1
fi
FLUXY_WORKER_ROUTE="$(cat "$FLUXY_TOOLS_DIR/route")"
export FLUXY_WORKER_ROUTE

# Remove every occurrence of $1 from PATH (so sourcing twice does not pile up).
_fluxy_path_drop() {
  local p=":$PATH:" old=
  while [ "$p" != "$old" ]; do
    old=$p
    p=${p//":$1:"/":"}
  done
  p=${p#:}
  PATH=${p%:}
}

_fluxy_shim_dir="$FLUXY_REPO_ROOT/scripts/rustc-shim"
_fluxy_path_drop "$_fluxy_shim_dir"
_fluxy_path_drop "$FLUXY_TOOLS_DIR/bin"
_fluxy_path_drop "$FLUXY_REPO_ROOT/node_modules/.bin"

case "$FLUXY_WORKER_ROUTE" in
debian)
  # Debian rustc-web/cargo-web + rust-web-src + lld-22, std built with -Zbuild-std.
  # The shim must come first (it fakes worker-build's target-libdir check), then
  # /usr/bin so that Debian's cargo/rustc win over ~/.cargo/bin (rustup).
  _fluxy_path_drop /usr/bin
  export PATH="$_fluxy_shim_dir:/usr/bin:$FLUXY_TOOLS_DIR/bin:$FLUXY_REPO_ROOT/node_modules/.bin:$PATH"
  export FLUXY_REAL_RUSTC=/usr/bin/rustc
  export RUSTC=/usr/bin/rustc
  export RUSTC_BOOTSTRAP=1
  export CARGO_UNSTABLE_BUILD_STD=std,panic_abort
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=/usr/lib/llvm-22/bin/wasm-ld
  ;;
rustup)
  # rustup toolchain with the prebuilt wasm32-unknown-unknown std: nothing special.
  _fluxy_cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  _fluxy_path_drop "$_fluxy_cargo_bin"
  export PATH="$_fluxy_cargo_bin:$FLUXY_TOOLS_DIR/bin:$FLUXY_REPO_ROOT/node_modules/.bin:$PATH"
  unset _fluxy_cargo_bin
  # In case the debian env was sourced earlier in this shell.
  unset FLUXY_REAL_RUSTC RUSTC RUSTC_BOOTSTRAP CARGO_UNSTABLE_BUILD_STD \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER
  ;;
*)
  echo "worker-env.sh: unknown route '$FLUXY_WORKER_ROUTE' in $FLUXY_TOOLS_DIR/route (want rustup or debian); rerun scripts/worker-setup" >&2
  unset -f _fluxy_path_drop
  unset _fluxy_shim_dir
  return 1 2>/dev/null || exit 1
  ;;
esac
unset -f _fluxy_path_drop
unset _fluxy_shim_dir

# Separate target dir for wasm builds: host builds in ./target are never
# invalidated by this env, and the cache survives fresh clones.
export CARGO_TARGET_DIR="${FLUXY_WASM_TARGET_DIR:-$FLUXY_TOOLS_DIR/wasm-target}"

# worker-build: use local binaries instead of downloading them.
export WASM_BINDGEN_USE_JS_SYS=1   # worker-build sets it itself; keeps cargo fingerprints stable
export WASM_BINDGEN_BIN="$FLUXY_TOOLS_DIR/bin/wasm-bindgen"
export ESBUILD_BIN="$FLUXY_REPO_ROOT/node_modules/.bin/esbuild"
if [ -x "$FLUXY_REPO_ROOT/node_modules/.bin/wasm-opt" ]; then
  export WASM_OPT_BIN="$FLUXY_REPO_ROOT/node_modules/.bin/wasm-opt"
fi
# worker-build's own wasm-opt step stays off in Cargo.toml
#   [package.metadata.wasm-pack.profile.release]
#   wasm-opt = false
# because it always adds --debuginfo (keeps the name section) and, without WASM_OPT_BIN,
# downloads binaryen from GitHub (fails here after ~30 s). scripts/worker-build runs
# node_modules/.bin/wasm-opt itself after worker-build.
# FLUXY_WORKER_BUILD is worker-build itself (no wasm-opt); build with scripts/worker-build.
export FLUXY_WORKER_BUILD="$FLUXY_TOOLS_DIR/bin/worker-build"
export FLUXY_WRANGLER="$FLUXY_REPO_ROOT/node_modules/.bin/wrangler"

# wrangler: strictly local, no telemetry, state kept inside the repo (.wrangler/ is gitignored).
export WRANGLER_SEND_METRICS=false
export WRANGLER_SEND_ERROR_REPORTS=false
export CLOUDFLARE_CF_FETCH_ENABLED=false
export CI="${CI:-true}"
export WRANGLER_LOG_PATH="$FLUXY_REPO_ROOT/.wrangler/logs"
export WRANGLER_REGISTRY_PATH="$FLUXY_REPO_ROOT/.wrangler/registry"
export NPM_CONFIG_UPDATE_NOTIFIER=false
unset CLOUDFLARE_API_TOKEN CLOUDFLARE_API_KEY CLOUDFLARE_EMAIL CLOUDFLARE_ACCOUNT_ID \
  CF_API_TOKEN CF_API_KEY CF_EMAIL CF_ACCOUNT_ID

# Run scripts from the worker dir with explicit ports (others may hold 8787/9229):
#   wrangler dev --local --ip 127.0.0.1 --port P --inspector-port Q --show-interactive-dev-session=false
