# Three crashes in a row, then a month... well, 700 s of stable running: its host dies and returns;
# it is restarted (a new count), not given up as "died 4 times in a row".
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
expect web1 RUNNING on h1
wait 700
host-dies h1
wait 15
host-boots h1
wait 5
expect web1 RUNNING on h1
