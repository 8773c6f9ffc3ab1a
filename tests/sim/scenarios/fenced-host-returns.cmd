# The only host is cut off and fenced; its rbd VM, released, waits for a host. The host returns and
# the VM is placed back on it: the old QEMU, cut off its disk by the fence, is never adopted.
scheduler s1
hosts h1
create web1 rbd
wait 3
partition h1
wait 15
expect web1 KILLED
heal h1
wait 5
expect web1 RUNNING on h1
expect-starts web1 2
