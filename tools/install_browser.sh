#!/usr/bin/env bash
# Installs Debian's Chromium and its WebDriver where missing, for the search page's
# browser test (tests/service/browser_test.py drives /usr/bin/chromium through
# /usr/bin/chromedriver with Selenium; no browser is downloaded by any other tool).
#
#   tools/install_browser.sh     exit 0 when both are installed afterwards (prints the
#                                 versions); non-zero with the reason on stderr
#
# Needs root and apt-get (Debian; Ubuntu's `chromium` package is a snap wrapper that
# does not run in containers). Chromium and chromedriver come from the same Debian
# source package, so their versions always match.
set -euo pipefail

die() {
    echo "install_browser: $*" >&2
    exit 1
}

have() {
    command -v "$1" >/dev/null 2>&1
}

report() {
    # Debian's chromium wrapper may print a shell warning on stderr; the version is on stdout.
    echo "chromium: $(chromium --version 2>/dev/null | head -n 1)"
    echo "chromedriver: $(chromedriver --version 2>/dev/null | head -n 1)"
}

if have chromium && have chromedriver; then
    report
    exit 0
fi
missing=""
have chromium || missing="chromium"
have chromedriver || missing="${missing:+$missing }chromium-driver"
if [ "$(id -u)" != 0 ]; then
    die "missing: $missing; run this as root (it uses apt-get), or: sudo apt-get install chromium chromium-driver"
fi
have apt-get || die "missing: $missing, and there is no apt-get here (not Debian): install Chromium and a matching chromedriver by hand"
export DEBIAN_FRONTEND=noninteractive
timeout 600 apt-get update -q >&2 || die "apt-get update failed (no access to the Debian package archive?)"
timeout 1200 apt-get install -y -q --no-install-recommends chromium chromium-driver >&2 \
    || die "apt-get install chromium chromium-driver failed (see above)"
have chromium && have chromedriver || die "chromium or chromedriver is still missing after apt-get install"
report
