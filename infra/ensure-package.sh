#!/usr/bin/env bash
# A Debian package a test needs, installed when it is missing: ensure-package.sh PACKAGE "WHAT FOR" PROBE...
# A PROBE is a command name or a path glob; any one found means installed. Idempotent; installs with
# apt-get when run as root, else says what to install (the test skips without it, and fails when CI=true).
set -euo pipefail
package="$1" purpose="$2"
shift 2
for probe in "$@"; do
  if command -v "$probe" >/dev/null 2>&1 || compgen -G "$probe" >/dev/null; then
    exit 0
  fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's $package package for $purpose"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package" >/dev/null; }
else
  echo "$package not found: install Debian's $package package (sudo apt-get install $package);" \
       "$purpose skips without it (and fails when CI=true)" >&2
fi
