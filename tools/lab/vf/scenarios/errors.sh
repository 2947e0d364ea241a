# Bad set-ups: a missing device, a VF not on vfio-pci, the PF itself. Each must fail cleanly.
for target in 0000:09:00.0 "$VF1" "$PF"; do
    if vf-tool info "$target" > /tmp/out 2>&1; then
        say "unexpected-success $target"
    fi
    say "error $target $(cat /tmp/out)"
done
vf-tool info "$VF0" | tag info
