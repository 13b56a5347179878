#!/usr/bin/env bash
# Chromium for the prediction page's browser test: Playwright drives Debian's package (no browser download).
exec bash "$(dirname "$0")/ensure-package.sh" chromium "the prediction page's browser test" chromium chromium-browser
