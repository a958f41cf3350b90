#!/usr/bin/env bash
# What tests/test_ohif.py needs, installed idempotently (seconds when already present):
#   - headless Chromium from Debian (chromium-headless-shell; apt, only as root);
#   - playwright-core and axe-core (tests/test_webpage.py's accessibility check), pinned in
#     package.json/package-lock.json, into tests/ohif/node_modules;
#   - OHIF Viewer's prebuilt static app, npm package @ohif/app (pinned below, integrity checked),
#     its dist/ unpacked into .cache/ohif/app-$OHIF_VERSION/dist without dist/ort (136 MB of
#     onnxruntime the viewer loads only for AI tools).
# Never `npx playwright install`: the browser is Debian's. Both paths are in .gitignore.
set -euo pipefail
cd "$(dirname "$0")/../.."

OHIF_VERSION=3.13.2
OHIF_INTEGRITY='sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=='
CACHE=.cache/ohif
APP="$CACHE/app-$OHIF_VERSION"

have_browser() {
    command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null
}
if ! have_browser; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "ohif setup: installing chromium-headless-shell (apt)"
        timeout 900 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-headless-shell' >/dev/null
    else
        echo "ohif setup: no chromium-headless-shell and no root/apt to install it" >&2
    fi
fi

if ! command -v npm >/dev/null; then
    echo "ohif setup: npm is missing (apt-get install nodejs npm)" >&2
    exit 1
fi

if [ ! -f tests/ohif/node_modules/playwright-core/package.json ] ||
   [ ! -f tests/ohif/node_modules/axe-core/package.json ] ||
   ! cmp -s tests/ohif/package-lock.json tests/ohif/node_modules/.package-lock.json.installed; then
    echo "ohif setup: npm ci playwright-core axe-core"
    (cd tests/ohif && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp tests/ohif/package-lock.json tests/ohif/node_modules/.package-lock.json.installed
fi

if [ ! -f "$APP/.complete" ]; then
    echo "ohif setup: @ohif/app@$OHIF_VERSION"
    rm -rf "$APP" "$CACHE/tmp"
    mkdir -p "$CACHE/tmp"
    (cd "$CACHE/tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
    tarball="$CACHE/tmp/ohif-app-$OHIF_VERSION.tgz"
    got="sha512-$(node -e 'process.stdout.write(require("crypto").createHash("sha512").update(require("fs").readFileSync(process.argv[1])).digest("base64"))' "$tarball")"
    if [ "$got" != "$OHIF_INTEGRITY" ]; then
        echo "ohif setup: @ohif/app tarball integrity mismatch ($got)" >&2
        exit 1
    fi
    tar -xzf "$tarball" -C "$CACHE/tmp" --exclude='package/dist/ort' package/dist
    mkdir -p "$APP"
    mv "$CACHE/tmp/package/dist" "$APP/dist"
    rm -rf "$CACHE/tmp"
    touch "$APP/.complete"
fi
echo "ohif setup: ready ($APP/dist, tests/ohif/node_modules/playwright-core)"
