# etcd unreachable for 30 s: nothing is decided meanwhile, a crash meanwhile is handled after, and
# no host is declared dead for the time nobody could renew a lease.
scheduler s1
hosts h1 h2
create web1
create web2
wait 3
etcd-down
crash web1
wait 30
etcd-up
wait 4
converged
