#!/bin/sh
# The report tests open pages in a real headless Chromium: Debian's package, never a browser download. Installed
# here where apt-get can (root, Debian/Ubuntu); elsewhere the browser tests skip with one line saying why.
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
        || echo "chromium could not be installed with apt-get: the browser checks of the HTML report will skip"
else
    echo "no chromium and no root apt-get: the browser checks of the HTML report will skip (apt-get install chromium)"
fi
exit 0
