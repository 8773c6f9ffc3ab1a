# Fencing fails: the VM waits KILLED with the reason; retried after UCLOUD_FENCE_RETRY, it works.
scheduler s1
hosts h1
fence-fails the power switch does not answer
create web1 rbd
wait 3
hosts h2
partition h1
wait 20
expect web1 KILLED on h1
fence-works
wait 35
expect web1 RUNNING on h2
