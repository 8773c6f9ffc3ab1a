# kill -9 of the agent and a new one: its VMs are adopted as they are; nothing changes.
scheduler s1
hosts h1
create web1
create web2
wait 3
ask web2 suspend
wait 2
restart-agent h1
wait 3
expect web1 RUNNING on h1
expect web2 SUSPENDED on h1
