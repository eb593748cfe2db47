#!/usr/bin/env bash
# Builds the npm package redistribute-client into dist/redistribute-client/ and packs it to
# dist/redistribute-client-<version>.tgz: cargo builds the wasm (profile wasm-release),
# wasm-bindgen writes the JS glue, the npm build of binaryen's wasm-opt shrinks it. Skips all but
# the cargo check when nothing changed. Needs what `scripts/setup.sh build` installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

wasm=target/wasm32-unknown-unknown/wasm-release/redistribute_client.wasm
out=target/wasm-bindgen
dist=dist/redistribute-client
version=$(node -p "require('./pkg-template/package.json').version")
tarball=dist/redistribute-client-$version.tgz

cargo build --quiet --locked -p redistribute-client --lib --target wasm32-unknown-unknown --profile wasm-release

# What a browser downloads, each file gzipped on its own, must stay within the budget (bytes).
# The goal is 60 KB (issue 14); the budget is where the package stands, so it cannot grow unseen
# (78.6 KB with the durable outbox and tab sharing; docs/BENCHMARKS.md has the breakdown).
budget=${SIZE_BUDGET:-79000}
check_size() {
  local total=0 f
  for f in "$dist/wasm/redistribute_client_bg.wasm" "$dist/wasm/redistribute_client.js" "$dist/index.js" "$dist/tabs.js"; do
    printf '  %-30s %8d B raw %8d B gzip\n' "$(basename "$f")" "$(wc -c <"$f")" "$(gzip -9c "$f" | wc -c)"
    total=$((total + $(gzip -9c "$f" | wc -c)))
  done
  echo "  downloaded by a browser: $total B gzip (budget $budget B)"
  if [ "$total" -gt "$budget" ]; then
    echo "the client package is over its size budget: $total > $budget bytes gzipped" >&2
    exit 1
  fi
}

# Up to date: the tarball is newer than the wasm and every file of the package template.
if [ -f "$tarball" ] && [ -z "$(find "$wasm" pkg-template -newer "$tarball" -print -quit)" ]; then
  echo "client package up to date: $tarball"
  check_size
  exit 0
fi

rm -rf "$out" "$dist"
wasm-bindgen --target web --out-dir "$out" --out-name redistribute_client "$wasm"

# Debian's binaryen corrupts wasm-bindgen output; the npm package's wasm-opt is current.
wasm_opt=node_modules/.bin/wasm-opt
[ -x "$wasm_opt" ] || { echo "wasm-opt missing: run scripts/setup.sh build" >&2; exit 1; }
"$wasm_opt" -Oz --strip-debug --strip-producers "$out/redistribute_client_bg.wasm" -o "$out/redistribute_client_bg.opt.wasm"
mv "$out/redistribute_client_bg.opt.wasm" "$out/redistribute_client_bg.wasm"

mkdir -p "$dist/wasm"
cp pkg-template/package.json pkg-template/index.d.ts pkg-template/README.md "$dist/"
cp "$out/redistribute_client_bg.wasm" "$dist/wasm/"
# The JavaScript ships minified (whitespace and syntax; names stay readable in stack traces).
esbuild=node_modules/.bin/esbuild
[ -x "$esbuild" ] || { echo "esbuild missing: run scripts/setup.sh build" >&2; exit 1; }
minify() { "$esbuild" "$1" --format=esm --minify-whitespace --minify-syntax --log-level=warning --outfile="$2"; }
minify "$out/redistribute_client.js" "$dist/wasm/redistribute_client.js"
minify pkg-template/index.js "$dist/index.js"
minify pkg-template/tabs.js "$dist/tabs.js"
# Minifying drops the comments that tell bundlers to leave the Node-only import alone; put them
# back (and fail loudly if the code they belong to changed shape).
hint='import(/* @vite-ignore */ /* webpackIgnore: true */ NODE_FS)'
[ "$(grep -o 'import(NODE_FS)' "$dist/index.js" | wc -l)" = 1 ] || { echo "index.js: expected one import(NODE_FS)" >&2; exit 1; }
sed -i "s|import(NODE_FS)|$hint|" "$dist/index.js"
(cd dist && npm pack --silent ./redistribute-client >/dev/null)

echo "built $tarball"
check_size
