#!/usr/bin/env bash
# Boots the lab guest against a vhost-user socket, console on this terminal (Ctrl-A X quits).
#   tools/lab/run-guest.sh SOCKET [KERNEL ARGS...]
#   tools/lab/run-guest.sh /tmp/vhost-vf.sock vhvf.mode=ping vhvf.ip=10.0.0.2/24 vhvf.peer=10.0.0.1
# QEMU connects to SOCKET and reconnects every second if the daemon restarts. The tests boot the
# same guest from tests/harness/qemu.rs.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,6p' "$0"; exit 2; }
socket=$1; shift
guest=$("$(dirname "$0")/build-guest.sh" | tail -1)
exec qemu-system-x86_64 -accel tcg -machine q35 -cpu max -smp 1 -m 512M \
    -object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \
    -chardev "socket,id=c0,path=$socket,reconnect-ms=1000" \
    -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 \
    -kernel "$guest/vmlinuz" -initrd "$guest/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet $*" \
    -nographic -nodefaults -no-reboot -serial mon:stdio
