#!/usr/bin/env bash
# Boots the SR-IOV lab guest: QEMU's igb (82576 PF, 7 VFs) behind an emulated Intel IOMMU with
# interrupt remapping (vfio_iommu_type1 refuses groups without it), under TCG, its network on
# TAP, its serial console in CONSOLE. Run it inside the network namespace that holds TAP. The
# integration tests (tests/harness/vf_lab.rs) and the benchmarks (tools/bench/) boot through here.
# The TAP has no vnet header, so QEMU completes offloaded checksums itself, as a NIC does on
# the wire: the host sees what a real 82576 would send.
#   tools/lab/vf/boot.sh GUEST_DIR TAP CONSOLE [KERNEL ARGS...]
#   (GUEST_DIR from tools/lab/vf/build.sh; KERNEL ARGS such as vflab.scenario=send)
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,7p' "$0"; exit 2; }
guest=$1 tap=$2 console=$3
shift 3
exec qemu-system-x86_64 -machine q35,kernel-irqchip=split -accel tcg -cpu max -m 1G -smp 2 \
    -device intel-iommu,intremap=on,caching-mode=on,aw-bits=48 \
    -device pcie-root-port,id=rp1,chassis=1,slot=1 \
    -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no,vnet_hdr=off" \
    -device igb,netdev=n0,bus=rp1,mac=52:54:00:12:34:56 \
    -kernel "$guest/vmlinuz" -initrd "$guest/initrd.gz" \
    -append "console=ttyS0 intel_iommu=on iommu=pt no_timer_check panic=-1 quiet $*" \
    -display none -monitor none -no-reboot -serial "file:$console"
