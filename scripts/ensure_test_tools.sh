#!/bin/sh
# System programs some tests drive for real, from Debian's packages (never a download): Chromium opens the HTML
# reports, Prometheus scrapes a training run's Ray metrics. Installed here where apt-get can (root, Debian/Ubuntu);
# elsewhere the tests that need one skip with one line saying why.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 - one word per package
    apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; } \
        || echo "could not apt-get install$missing: the tests that drive it will skip"
else
    echo "no$missing and no root apt-get: the tests that drive it will skip (apt-get install$missing)"
fi
exit 0
