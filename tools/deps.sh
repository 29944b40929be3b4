#!/bin/sh
# Install the Debian packages that the tests, the demo and the benchmarks use, if missing.
# Package services are not started (policy-rc.d): amoc starts its own servers on loopback.
set -eu
missing=""
python3 -c 'import ensurepip, venv' 2>/dev/null || missing="python3-venv"
for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "deps: missing Debian packages:$missing (install them as root)" >&2
    exit 1
fi
echo "installing$missing"
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
fi
trap '[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
# shellcheck disable=SC2086 - one word per package
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
