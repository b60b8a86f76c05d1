#!/usr/bin/env bash
# System packages for the App browser tests (tests/plugin/test_app_browser.py): Debian's Chromium.
# Playwright's Python driver comes from the "dev" extra in pyproject.toml; it never downloads a browser here.
# If Chromium cannot be installed, the browser tests skip with that reason; nothing else depends on it.
set -uo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }; then
        echo "warning: could not install chromium; the App browser tests will be skipped" >&2
    fi
fi
exit 0
