#!/usr/bin/env bash
# Builds the npm package redistribute-client into dist/redistribute-client/ and packs it to
# dist/redistribute-client-<version>.tgz. Needs wasm-pack, the wasm32 target and the root npm
# dependencies (binaryen's wasm-opt); `bash .ci/run` installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/wasm-pack
dist=dist/redistribute-client
rm -rf "$out" "$dist"
wasm-pack --log-level warn build client-wasm --profile wasm-release --target web --no-pack \
  --out-dir "../$out" --out-name redistribute_client

# Debian's binaryen corrupts wasm-bindgen output; the npm package's wasm-opt is current.
wasm_opt=node_modules/.bin/wasm-opt
[ -x "$wasm_opt" ] || { echo "wasm-opt missing: run npm install at the repository root" >&2; exit 1; }
"$wasm_opt" -Oz --strip-debug --strip-producers "$out/redistribute_client_bg.wasm" -o "$out/redistribute_client_bg.opt.wasm"
mv "$out/redistribute_client_bg.opt.wasm" "$out/redistribute_client_bg.wasm"

mkdir -p "$dist/wasm"
cp pkg-template/package.json pkg-template/index.js pkg-template/index.d.ts pkg-template/README.md "$dist/"
cp "$out/redistribute_client.js" "$out/redistribute_client_bg.wasm" "$dist/wasm/"
(cd dist && npm pack --silent ./redistribute-client >/dev/null)

size() { printf '%-34s %8d B raw %8d B gzip\n' "$(basename "$1")" "$(wc -c <"$1")" "$(gzip -9c "$1" | wc -c)"; }
echo "built $dist"
for f in "$dist/wasm/redistribute_client_bg.wasm" "$dist/wasm/redistribute_client.js" "$dist/index.js"; do size "$f"; done
