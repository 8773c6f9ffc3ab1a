# A host cut off from etcd: DOWN after its lease, its rbd VM KILLED, the host fenced (its guest cut
# off the disk), the VM placed on the other host. The host returns: it restarts nothing of it.
scheduler s1
hosts h1
create web1 rbd
wait 3
hosts h2
expect web1 RUNNING
partition h1
wait 15
expect web1 RUNNING on h2
heal h1
wait 5
converged
expect-starts web1 2
