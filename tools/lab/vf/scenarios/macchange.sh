# The PF gives VF0 a new MAC while vf-tool echoes frames back to their sender. The PF does not
# tell the VF: the driver must notice (frames for the new address reach it), re-initialise,
# and answer from the new MAC. The host drives traffic; it stops the VM when it has seen enough.
NEW_MAC=$(arg vflab.new_mac)
vf-tool echo "$VF0" --count 1000000 --timeout 600 2>&1 | while IFS= read -r line; do
    say "echo $line"
    echo "$line" >> /tmp/echo.log
done &
until [ "$(grep -c '^echo ' /tmp/echo.log 2>/dev/null)" -ge 10 ]; do sleep 0.2; done
/sbin/ip2 link set "$PF_IF" vf 0 mac "$NEW_MAC" && say "mac-changed $NEW_MAC"
wait
