#!/usr/bin/env bash
# Installs the system programs the test suite talks to, when they are missing and we are root.
# Nothing is downloaded outside the distribution's package archive.
set -euo pipefail

want=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || want+=(mosquitto)
command -v faketime >/dev/null 2>&1 || want+=(faketime)  # clock tests run gateways on a wrong clock
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || want+=(nats-server)
command -v coap-client-notls >/dev/null 2>&1 || want+=(libcoap3-bin)  # CoAP interop tests
[ -x /usr/bin/chromium ] || want+=(chromium fonts-liberation)  # real-browser tests
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || want+=(fonts-wqy-microhei)  # Chinese fault names in screenshots
for pkg in "$@"; do want+=("$pkg"); done

if [ ${#want[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "citygate: missing system packages: ${want[*]} (install them with apt-get as root)" >&2
    exit 0
fi
echo "citygate: installing ${want[*]} from the distribution archive"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq -o DPkg::Lock::Timeout=300
apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${want[@]}" >/dev/null
# The Debian package starts a system broker on 1883; the tests start their own on free ports.
