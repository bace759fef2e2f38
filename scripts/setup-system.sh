#!/usr/bin/env bash
# Installs the Debian packages pushlab's tests and experiments use, only those missing:
#   ip, tc (iproute2)  network namespaces, veth, tbf bandwidth limits   (experiment loss)
#   nft (nftables)     random packet drop inside those namespaces       (experiment loss)
#   nginx              the real reverse proxy in front of the server    (proxy, idle-timeout)
#   caddy              the other real reverse proxy: TLS and HTTP/2 in front of the server
#                      (`pushlab serve --front caddy`, tests/test_fronts.py)
#   redis-server       the shared stream log of the scale-out mode (`pushlab serve --log
#                      redis://...`, netem/redis.py, netem/cluster.py; redis-cli comes with it)
#   chromium           the real browser for the page's tests and the browser clients
#                      (driven by Playwright with executable_path; no browser download)
#                                                                       (browser-connections)
# Runs as root (CI and the dev machines are root). Elsewhere, or when the install fails:
#   default      says what to install and exits 1 (`make test`, `make system`: they need them)
#   --or-advise  says what to install and what the suite will skip, and exits 0 (`make run`:
#                the suite runs anyway and its report names each skipped experiment's reason)
set -euo pipefail
advise=0
[ "${1:-}" = "--or-advise" ] && advise=1
need=()
# command:package pairs; PUSHLAB_SYSTEM_NEEDS replaces them (the tests name a missing one)
read -r -a pairs <<< "${PUSHLAB_SYSTEM_NEEDS:-ip:iproute2 tc:iproute2 nft:nftables nginx:nginx caddy:caddy redis-server:redis-server chromium:chromium}"
for cmd_pkg in "${pairs[@]}"; do
  cmd=${cmd_pkg%%:*}; pkg=${cmd_pkg##*:}
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
    need+=("$pkg")
  fi
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)

cannot() {  # $1: why the packages are not installed
  if [ "$advise" -eq 1 ]; then
    echo "setup-system: $1: missing Debian packages ${need[*]}." >&2
    echo "setup-system: install them with \`sudo make system\`, then run \`make run\` again;" \
         "running the suite now, without the experiments that need them (the report says why)." >&2
    exit 0
  fi
  echo "setup-system: $1: please install: ${need[*]} (\`sudo make system\`)" >&2
  exit 1
}

if [ "$(id -u)" -ne 0 ]; then
  cannot "not root"
fi
echo "setup-system: installing ${need[*]}"
if ! { apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         "${need[@]}" >/dev/null; }; then
  cannot "apt-get failed"
fi
# Debian's nginx and caddy packages start a system service on port 80, redis-server one on
# 6379 (where systemd runs); pushlab runs its own, on loopback ports of its choosing, so stop
# the packaged services if the install started them (redis also disabled: nothing of the
# lab should find a stranger's Redis on 6379 after a reboot).
if command -v systemctl >/dev/null 2>&1; then
  systemctl stop nginx >/dev/null 2>&1 || true
  systemctl stop caddy >/dev/null 2>&1 || true
  systemctl stop redis-server >/dev/null 2>&1 || true
  systemctl disable redis-server >/dev/null 2>&1 || true
fi
if [ -f /run/nginx.pid ]; then kill "$(cat /run/nginx.pid)" 2>/dev/null || true; fi
# without systemd, Debian's init script started it: it writes this pid file
if [ -f /run/redis/redis-server.pid ]; then
  kill "$(cat /run/redis/redis-server.pid)" 2>/dev/null || true
fi
