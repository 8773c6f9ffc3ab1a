# A VM that dies at every start: restarted with a doubling backoff, then ERROR after 3 restarts.
scheduler s1
hosts h1
create web1
wait 3
crash web1
wait 2
crash web1
wait 3
crash web1
wait 5
crash web1
wait 10
expect web1 ERROR on h1
# Its owner starts it again: a new count.
ask web1 start
wait 3
expect web1 RUNNING on h1
