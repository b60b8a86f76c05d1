#!/usr/bin/env bash
# System packages for the App browser test (tests/plugin/test_app_browser.py): Debian's Chromium.
# Playwright's Python driver comes from requirements-dev.txt; it never downloads a browser here.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
fi
