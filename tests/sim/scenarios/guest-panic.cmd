# A guest kernel panics (pvpanic): a crash, restarted after the backoff.
scheduler s1
hosts h1
create web1
wait 3
panic web1
wait 3
expect web1 RUNNING on h1
