# Two schedulers: one leads; it dies, the other takes over after the leader's lease (10 s).
scheduler s1
scheduler s2
hosts h1
create web1
wait 3
scheduler-dies s1
create web2
wait 13
expect web2 RUNNING on h1
