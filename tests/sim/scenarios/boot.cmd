# One VM created, placed, started: the happy path.
scheduler s1
hosts h1
create web1
wait 3
expect web1 RUNNING on h1
