#!/usr/bin/env bash
# Builds the demo app (www-demo/dist) on the packed redistribute-client tarball, installed with
# npm the way an app installs any package. Run scripts/build-client.sh first.
set -euo pipefail
cd "$(dirname "$0")/../www-demo"
[ -f ../dist/redistribute-client-0.1.0.tgz ] || { echo "run scripts/build-client.sh first" >&2; exit 1; }
# Reinstall the client each time: the tarball changes with every build.
rm -rf node_modules/redistribute-client
npm install --no-audit --no-fund --loglevel=error
npx vite build --logLevel warn
echo "built www-demo/dist"
