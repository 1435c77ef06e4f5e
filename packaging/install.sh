#!/usr/bin/env bash
# Install (or upgrade) the CityGate edge agent from an unpacked bundle, with no network.
#   sudo ./install.sh                 # from inside the unpacked citygate-edge-<version>-* dir
# Environment:
#   PREFIX=/opt/citygate              where venvs/<version> and the `current` symlink live
#   CONFIG=/etc/citygate/gateway.toml the gateway config (copied in by provisioning)
#   INSTALL_UDEV=1                    also install the example udev rules (edit them first!)
#   NO_SYSTEM=1                       only build the venv and the symlink (no user, unit, start);
#                                     used by tests and for trying a bundle as a normal user
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/opt/citygate}
CONFIG=${CONFIG:-/etc/citygate/gateway.toml}
PYTHON=${PYTHON:-python3}
VERSION=$(cat "$HERE/VERSION")
VENV="$PREFIX/venvs/$VERSION"

die() { echo "install.sh: $*" >&2; exit 1; }

(cd "$HERE" && sha256sum --quiet -c SHA256SUMS) || die "bundle damaged: SHA256SUMS do not match"
"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "needs Python 3.11 with venv (Debian: apt install python3-venv, from the OS image)"

if [ -x "$VENV/bin/citygate" ]; then
    echo "version $VERSION is already installed in $VENV"
else
    rm -rf "$VENV.partial"
    "$PYTHON" -m venv "$VENV.partial"
    "$VENV.partial/bin/python" -m pip install --quiet --no-index \
        --find-links "$HERE/wheelhouse" --upgrade pip
    "$VENV.partial/bin/python" -m pip install --quiet --no-index \
        --find-links "$HERE/wheelhouse" "citygate==$VERSION"
    mv -T "$VENV.partial" "$VENV"  # venvs are relocatable only by rename of the same path
fi
# Atomic switch: readers see the old or the new target, never a missing link.
ln -sfn "venvs/$VERSION" "$PREFIX/current.new"
mv -T "$PREFIX/current.new" "$PREFIX/current"
echo "installed citygate $VERSION in $VENV; $PREFIX/current -> venvs/$VERSION"

[ "${NO_SYSTEM:-0}" = 1 ] && exit 0
[ "$(id -u)" = 0 ] || die "run as root (or NO_SYSTEM=1 for the venv only)"

id citygate >/dev/null 2>&1 || useradd --system --home-dir /var/lib/citygate \
    --shell /usr/sbin/nologin --user-group citygate
usermod -aG dialout citygate
install -d -o citygate -g citygate -m 0750 /var/lib/citygate
install -d -o root -g citygate -m 0750 /etc/citygate
install -D -m 0755 "$HERE/citygate-boot-guard" "$PREFIX/bin/citygate-boot-guard"
chown -R citygate:citygate "$PREFIX"  # signed updates install new venvs beside this one
install -m 0644 "$HERE/citygate-edge.service" /etc/systemd/system/citygate-edge.service
mkdir -p "$VENV/share/doc/citygate" && cp "$HERE/field-install.md" "$VENV/share/doc/citygate/"
if [ "${INSTALL_UDEV:-0}" = 1 ]; then
    install -m 0644 "$HERE/99-citygate-serial.rules" /etc/udev/rules.d/
    udevadm control --reload && udevadm trigger --subsystem-match=tty
fi
systemctl daemon-reload
systemctl enable citygate-edge.service
if [ -f "$CONFIG" ]; then
    "$VENV/bin/citygate" edge check --config "$CONFIG"
    systemctl restart citygate-edge.service
    echo "started: journalctl -u citygate-edge -f"
else
    echo "no $CONFIG yet: provision the gateway, then: systemctl start citygate-edge"
fi
