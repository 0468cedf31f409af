#!/usr/bin/env bash
# Install Debian packages the project needs, only when missing: redis-server (broker),
# chromium (browser tests), postgresql (the PostgreSQL job of `make test`). Uses sudo
# when not root.
set -euo pipefail
declare -A binary=([redis-server]=/usr/bin/redis-server [chromium]=/usr/bin/chromium
                   [postgresql]="/usr/lib/postgresql/*/bin/initdb")
missing=()
for package in "$@"; do
  compgen -G "${binary[$package]:-/nonexistent}" >/dev/null || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "Installing ${missing[*]} with apt-get..."
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
