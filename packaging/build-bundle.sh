#!/usr/bin/env bash
# Build the offline install bundle a technician carries to a gateway:
#   citygate-edge-<version>-<platform>.tar.gz
#     VERSION, SHA256SUMS, install.sh, citygate-edge.service, 99-citygate-serial.rules,
#     field-install.md, wheelhouse/ (citygate + every dependency as wheels, plus pip)
#
# Run on a machine with network access, from the repository root:
#   packaging/build-bundle.sh [OUT_DIR]
# Wheels must match the gateway (CPython 3.11 on Debian bookworm, aarch64 or armv7l). Either
# run this on a Pi / in an arm64 container, or cross-download binary wheels with
#   PLATFORM=manylinux2014_aarch64 packaging/build-bundle.sh
# (armv7l: PLATFORM=linux_armv7l with PIP_EXTRA_INDEX_URL=https://www.piwheels.org/simple).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)
PYTHON=${PYTHON:-python3}
PLATFORM=${PLATFORM:-}
PYVER=${PYVER:-3.11}
VERSION=$(sed -n 's/^version *= *//p' "$ROOT/setup.cfg" | head -1)
[ -n "$VERSION" ] || { echo "no version in setup.cfg" >&2; exit 1; }
NAME="citygate-edge-$VERSION-${PLATFORM:-$(uname -m)}"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/$NAME/wheelhouse"
WH="$STAGE/$NAME/wheelhouse"

if [ -z "$PLATFORM" ]; then
    "$PYTHON" -m pip wheel --quiet --wheel-dir "$WH" "$ROOT" pip
else
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WH" "$ROOT"
    "$PYTHON" -m pip download --quiet --dest "$WH" --only-binary=:all: \
        --platform "$PLATFORM" --python-version "$PYVER" --implementation cp \
        "$WH"/citygate-*.whl pip
fi

cp "$ROOT/packaging/install.sh" "$ROOT/packaging/citygate-edge.service" \
   "$ROOT/packaging/citygate-boot-guard" \
   "$ROOT/packaging/99-citygate-serial.rules" "$ROOT/docs/field-install.md" "$STAGE/$NAME/"
echo "$VERSION" > "$STAGE/$NAME/VERSION"
(cd "$STAGE/$NAME" && find . -type f ! -name SHA256SUMS -print0 | sort -z \
    | xargs -0 sha256sum > SHA256SUMS)
# Reproducible archive: fixed order, owners and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-0}" \
    -C "$STAGE" -czf "$OUT/$NAME.tar.gz" "$NAME"
echo "$OUT/$NAME.tar.gz"
