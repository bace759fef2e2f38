#!/usr/bin/env bash
# Installs the Debian packages pushlab's tests and experiments use, only those missing:
#   ip, tc (iproute2)  network namespaces, veth, tbf bandwidth limits
#   nft (nftables)     random packet drop inside those namespaces
#   nginx              the real reverse proxy in front of the server
#   chromium           the real browser for the page's tests and the browser clients
#                      (driven by Playwright with executable_path; no browser download)
# Runs as root (CI and the dev machines are root); elsewhere it says what to install.
set -euo pipefail
need=()
for cmd_pkg in "ip:iproute2" "tc:iproute2" "nft:nftables" "nginx:nginx" "chromium:chromium"; do
  cmd=${cmd_pkg%%:*}; pkg=${cmd_pkg##*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-system: please install: ${need[*]} (needs root)" >&2
  exit 1
fi
echo "setup-system: installing ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's nginx package starts a system nginx on port 80; pushlab runs its own, on loopback
# ports of its choosing, so stop the packaged service if the install started one.
if command -v systemctl >/dev/null 2>&1; then systemctl stop nginx >/dev/null 2>&1 || true; fi
if [ -f /run/nginx.pid ]; then kill "$(cat /run/nginx.pid)" 2>/dev/null || true; fi
