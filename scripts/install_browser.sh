#!/usr/bin/env bash
# Install the browser that tests/test_app_browser.py drives: Debian's chromium and its chromedriver.
#
#   bash scripts/install_browser.sh
#
# Nothing downloads a browser build of its own: apt installs the distribution's packages, and the test
# hands Selenium /usr/bin/chromedriver so that Selenium Manager never runs. Safe to re-run: nothing is done
# when /usr/bin/chromium and /usr/bin/chromedriver already exist. Needs root (CI runs as root), or sudo.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "[install_browser] chromium and chromedriver already installed: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[install_browser] apt-get not found: install Chromium and its chromedriver at /usr/bin/chromium and" \
       "/usr/bin/chromedriver with your system's package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver
echo "[install_browser] installed: $(/usr/bin/chromium --version)"
