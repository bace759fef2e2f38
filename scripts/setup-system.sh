#!/usr/bin/env bash
# Installs the Debian packages pushlab's tests and experiments use, only those missing.
# Runs as root (CI and the dev machines are root); elsewhere it says what to install.
set -euo pipefail
need=()
for cmd_pkg in "ip:iproute2"; do
  cmd=${cmd_pkg%%:*}; pkg=${cmd_pkg##*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-system: please install: ${need[*]} (needs root)" >&2
  exit 1
fi
echo "setup-system: installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
