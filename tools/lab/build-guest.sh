#!/usr/bin/env bash
# Builds the lab's test guest: a Debian 6.12 kernel (bookworm-backports package, extracted,
# never installed) and a busybox initramfs with virtio_net and tools/lab/guest-init.
# Output (printed on the last line): DIR with DIR/vmlinuz and DIR/initrd.gz.
# Cached under $VHVF_LAB_CACHE (default <repo>/.lab-cache), keyed by the kernel package and the
# hash of this script and the init: a re-run with nothing changed does no work.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${VHVF_LAB_CACHE:-$repo/.lab-cache}
lab=$repo/tools/lab
mkdir -p "$cache/kernel"

log() { echo "build-guest: $*" >&2; }

# The newest linux-image-6.12.*+deb12-amd64 (the unsigned image; -dbg and -unsigned excluded).
kernel_pkg() {
    apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' \
        | awk '{print $1}' | sort -V | tail -1
}

pkg=$(ls "$cache"/kernel/*.pkgname 2>/dev/null | head -1 | xargs -r basename | sed 's/\.pkgname$//' || true)
if [ -z "$pkg" ]; then
    pkg=$(kernel_pkg)
    [ -n "$pkg" ] || { log "no linux-image-6.12.*+deb12-amd64 package found: run tools/lab/install-deps.sh (it adds bookworm-backports)"; exit 1; }
    log "downloading $pkg"
    (cd "$cache/kernel" && apt-get download -q -t bookworm-backports "$pkg" >&2)
    touch "$cache/kernel/$pkg.pkgname"
fi
kroot=$cache/kernel/root
if [ ! -d "$kroot/boot" ]; then
    log "extracting $pkg"
    rm -rf "$kroot"
    dpkg-deb -x "$cache"/kernel/"${pkg}"_*.deb "$kroot"
fi
kver=$(ls "$kroot/lib/modules" | head -1)
moddir=$kroot/lib/modules/$kver
# The package ships no modules.dep: depmod makes it in the extracted tree only.
[ -f "$moddir/modules.dep" ] || { log "depmod $kver"; depmod -b "$kroot" "$kver"; }

key=$( (echo "$pkg"; cat "$lab/build-guest.sh" "$lab/guest-init") | sha256sum | cut -c1-16)
out=$cache/guest-$key
if [ -f "$out/initrd.gz" ] && [ -f "$out/vmlinuz" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

log "building initramfs for $kver"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules}
cp /bin/busybox "$staging/bin/busybox"
for applet in $("$staging/bin/busybox" --list); do
    [ -e "$staging/bin/$applet" ] || ln -s busybox "$staging/bin/$applet"
done
# virtio_pci is built into Debian's kernel; virtio_net needs failover and net_failover.
for module in failover net_failover virtio_net; do
    path=$(grep -E "/${module}\.ko(\.xz)?:" "$moddir/modules.dep" | head -1 | cut -d: -f1)
    [ -n "$path" ] || { log "module $module not found in $kver"; exit 1; }
    case $path in
        *.xz) xz -dc "$moddir/$path" > "$staging/lib/modules/$module.ko" ;;
        *) cp "$moddir/$path" "$staging/lib/modules/$module.ko" ;;
    esac
done
install -m 0755 "$lab/guest-init" "$staging/init"
mkdir -p "$out.tmp"
(cd "$staging" && find . | cpio -o -H newc --quiet | gzip -1 > "$out.tmp/initrd.gz")
cp "$kroot/boot/vmlinuz-$kver" "$out.tmp/vmlinuz"
rm -rf "$out"
mv "$out.tmp" "$out"
log "built $out ($(du -h "$out/initrd.gz" | cut -f1) initramfs)"
echo "$out"
