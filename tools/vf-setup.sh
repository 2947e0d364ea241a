#!/usr/bin/env bash
# Prepares SR-IOV VFs of an Intel 82576/I350 PF for vhost-vf: creates them, gives each a MAC
# from the PF (before any driver binds), keeps anti-spoofing on and trust off, and binds them to
# vfio-pci. Prints one line per VF: "vf=N bdf=... mac=... group=...".
#   tools/vf-setup.sh PF_IFNAME NUM_VFS [MAC_PREFIX]     (MAC_PREFIX default 52:54:00:aa:00)
# Needs root, the IOMMU on (intel_iommu=on iommu=pt) and the vfio-pci module.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,7p' "$0"; exit 2; }
pf=$1; count=$2; prefix=${3:-52:54:00:aa:00}
ip=$(command -v ip)

dev=$(readlink -f "/sys/class/net/$pf/device") || { echo "no network interface $pf" >&2; exit 1; }
[ -e "$dev/sriov_totalvfs" ] || { echo "$pf does not support SR-IOV" >&2; exit 1; }
total=$(cat "$dev/sriov_totalvfs")
[ "$count" -le "$total" ] || { echo "$pf supports at most $total VFs" >&2; exit 1; }
ls /sys/kernel/iommu_groups/ | grep -q . || {
    echo "the IOMMU is off: boot with intel_iommu=on iommu=pt (or amd_iommu=on)" >&2; exit 1; }
modprobe vfio-pci

"$ip" link set "$pf" up
# VFs must not be grabbed by igbvf before their MAC is set and they are handed to vfio-pci.
echo 0 > "$dev/sriov_drivers_autoprobe"
if [ "$(cat "$dev/sriov_numvfs")" != "$count" ]; then
    echo 0 > "$dev/sriov_numvfs"
    echo "$count" > "$dev/sriov_numvfs"
fi
for ((n = 0; n < count; n++)); do
    mac=$(printf '%s:%02x' "$prefix" $((0x10 + n)))
    "$ip" link set "$pf" vf "$n" mac "$mac" spoofchk on trust off
    vf=$(basename "$(readlink "$dev/virtfn$n")")
    if [ -e "/sys/bus/pci/devices/$vf/driver" ]; then
        echo "$vf" > "/sys/bus/pci/devices/$vf/driver/unbind"
    fi
    echo vfio-pci > "/sys/bus/pci/devices/$vf/driver_override"
    echo "$vf" > /sys/bus/pci/drivers_probe
    group=$(basename "$(readlink "/sys/bus/pci/devices/$vf/iommu_group")")
    echo "vf=$n bdf=$vf mac=$mac group=$group"
done
