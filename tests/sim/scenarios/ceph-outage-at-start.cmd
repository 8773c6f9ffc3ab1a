# Ceph does not answer when an rbd VM is to start: no crash counted, no ERROR; started once it answers.
scheduler s1
hosts h1
ceph-down
create web1 rbd
wait 12
expect web1 STARTING on h1
ceph-up
wait 6
expect web1 RUNNING on h1
expect-starts web1 1
