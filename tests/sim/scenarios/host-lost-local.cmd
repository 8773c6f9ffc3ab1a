# A host dies with its local-disk VM: KILLED, and it waits for its host (its disk is there).
scheduler s1
hosts h1
create web1
wait 3
host-dies h1
wait 15
expect web1 KILLED on h1
host-boots h1
wait 5
expect web1 RUNNING on h1
