#!/usr/bin/env bash
# Builds the demo app (www-demo/dist) on the packed redistribute-client tarball, installed with
# npm the way an app installs any package. Run scripts/build-client.sh first. Skips the build
# when neither the package nor the demo's sources changed.
set -euo pipefail
cd "$(dirname "$0")/../www-demo"
version=$(node -p "require('../pkg-template/package.json').version")
tarball=../dist/redistribute-client-$version.tgz
[ -f "$tarball" ] || { echo "run scripts/build-client.sh first" >&2; exit 1; }

stamp=dist/.built
if [ -f "$stamp" ] && [ -z "$(find "$tarball" index.html src package.json vite.config.js -newer "$stamp" -print -quit)" ]; then
  echo "demo up to date: www-demo/dist"
  exit 0
fi
# Reinstall the client each time: the tarball changes with every build.
rm -rf node_modules/redistribute-client
npm install --no-audit --no-fund --loglevel=error >/dev/null
npx vite build --logLevel warn
touch "$stamp"
echo "built www-demo/dist"
