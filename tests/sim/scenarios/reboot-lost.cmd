# A reset that times out is not marked done: the reboot is tried again and happens.
scheduler s1
hosts h1
create web1
wait 3
lose-next web1 reset
ask web1 reboot
wait 8
expect web1 RUNNING on h1
