#!/usr/bin/env bash
# Builds the SR-IOV lab guest: the Debian 6.12 kernel (shared with build-guest.sh) and an
# initramfs with igb, VFIO, busybox, iproute2, the scenarios in scenarios/, and each BINARY
# given (with its shared libraries); with --dpdk also DPDK's testpmd and the PMDs the peer
# comparisons use. Prints the guest directory (vmlinuz, initrd.gz) last.
# Cached under $VHVF_LAB_CACHE by a hash of every input, binaries included.
#   tools/lab/vf/build.sh [--dpdk] BINARY...
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cache=${VHVF_LAB_CACHE:-$repo/.lab-cache}
log() { echo "vf-lab: $*" >&2; }
dpdk=no
if [ "${1:-}" = --dpdk ]; then
    dpdk=yes
    shift
fi
# DPDK 22.11 loads PMDs as plugins from this directory (EAL's RTE_EAL_PMD_PATH).
pmd_dir=/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0
pmds=(librte_bus_pci librte_bus_vdev librte_mempool_ring librte_net_e1000 librte_net_vhost
      librte_net_virtio)

# build-guest.sh fetches and extracts the kernel into the shared cache.
"$repo/tools/lab/build-guest.sh" >/dev/null
kroot=$cache/kernel/root
kver=$(ls "$kroot/lib/modules" | head -1)
moddir=$kroot/lib/modules/$kver

key=$( (echo "$kver $dpdk"; cat "$here/build.sh" "$here/init" "$here"/scenarios/*.sh; cat "$@") | sha256sum | cut -c1-16)
out=$cache/vf-guest-$key
if [ -f "$out/initrd.gz" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

log "building the SR-IOV lab initramfs for $kver"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,run,var,etc,lib/modules,scenarios}
ln -s /run "$root/var/run"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Modules, dependencies first, decompressed (busybox insmod reads plain .ko).
order=()
declare -A seen
add_module() {
    local rel=$1 name dep
    name=$(basename "$rel" .ko.xz)
    [ -n "${seen[$name]:-}" ] && return
    seen[$name]=1
    for dep in $(grep -E "^$rel:" "$moddir/modules.dep" | cut -d: -f2); do
        add_module "$dep"
    done
    xz -dc "$moddir/$rel" > "$root/lib/modules/$name.ko"
    order+=("$name")
}
for m in igb vfio vfio_iommu_type1 vfio-pci; do
    rel=$(grep -E "/(${m//-/_}|${m//_/-})\.ko(\.xz)?:" "$moddir/modules.dep" | head -1 | cut -d: -f1)
    [ -n "$rel" ] || { log "module $m not found"; exit 1; }
    add_module "$rel"
done
echo "${order[*]}" > "$root/lib/modules/order"

# Binaries with their libraries, at the same paths (the dynamic loader looks there).
copy_with_libs() {
    local bin=$1 dest=$2 lib
    install -D -m 0755 "$bin" "$root$dest"
    for lib in $(ldd "$bin" | awk '/=>/ {print $3} $1 ~ /^\// {print $1}'); do
        [ -e "$root$lib" ] || install -D "$(readlink -f "$lib")" "$root$lib"
    done
}
# Debian's busybox ip lacks "ip link set PF vf N ...": the real iproute2, by absolute path.
copy_with_libs "$(command -v ip)" /sbin/ip2
for bin in "$@"; do
    copy_with_libs "$bin" "/bin/$(basename "$bin")"
done
if [ $dpdk = yes ]; then
    testpmd=$(command -v dpdk-testpmd) || { log "dpdk-testpmd not found: run tools/lab/install-deps.sh"; exit 1; }
    copy_with_libs "$testpmd" /bin/dpdk-testpmd
    for pmd in "${pmds[@]}"; do
        copy_with_libs "$pmd_dir/$pmd.so.23" "$pmd_dir/$pmd.so.23"
        # EAL loads only names ending in .so or .so.23.0 from the directory.
        ln -sf "$pmd.so.23" "$root$pmd_dir/$pmd.so"
    done
    # glibc loads libgcc_s at run time for pthread_cancel (testpmd's exit).
    copy_with_libs /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib/x86_64-linux-gnu/libgcc_s.so.1
fi
install -m 0755 "$here/init" "$root/init"
install -m 0644 "$here"/scenarios/*.sh "$root/scenarios/"

mkdir -p "$out.tmp"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 > "$out.tmp/initrd.gz")
cp "$kroot/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built $out"
echo "$out"
