# Host to VF: the host injects frames to VF0's MAC and to another MAC once it sees "ready";
# the VF prints what reaches it. Interrupt mode, then poll mode. The host owns the deadline
# (the TCG guest clock is not to be trusted for it): the tool waits long, and the host test
# kills the VM when its own deadline passes.
vf-tool recv "$VF0" --count 50 --timeout 600 --print | tag irq
vf-tool recv "$VF0" --count 50 --timeout 600 --print --poll | tag poll
