# The disk takes no more writes: QEMU pauses the guest on the I/O error; it is not killed, the
# owner is told, and it is resumed (tried every 10 s) once the disk takes writes again.
scheduler s1
hosts h1
create web1
wait 3
disk-full web1
wait 25
expect web1 RUNNING on h1
disk-freed web1
wait 11
converged
