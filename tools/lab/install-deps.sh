#!/usr/bin/env bash
# Installs what the test suite and the lab need on a Debian bookworm host (root).
# Idempotent: a second run only checks. QEMU 10 comes from bookworm-backports because
# bookworm's own QEMU (7.2) has no `igb` device.
set -euo pipefail

need_root() { [ "$(id -u)" = 0 ] || { echo "install-deps: run as root (apt-get)" >&2; exit 1; }; }

# dpdk-testpmd ships in dpdk-dev; its PMDs are plugins in separate packages (only "Recommended").
PACKAGES=(busybox-static cpio kmod xz-utils iproute2 procps tcpdump pciutils python3 ethtool
          dpdk-dev librte-net-virtio23 librte-net-vhost23 librte-net-tap23 librte-net-e1000-23
          librte-mempool-ring23 librte-bus-vdev23 librte-bus-pci23)

have_all() {
    command -v qemu-system-x86_64 >/dev/null || return 1
    command -v dpdk-testpmd >/dev/null || return 1
    qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"' || return 1
    local p
    for p in "${PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || return 1; done
}

if have_all; then
    echo "install-deps: everything present"
    exit 0
fi
need_root

# Add bookworm-backports with the same URI and keyring as the main Debian entry.
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
qemu-system-x86_64 --version | head -1
