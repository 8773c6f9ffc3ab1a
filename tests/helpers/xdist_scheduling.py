"""How deploy/test.sh shares the suite between its pytest-xdist workers (`--dist loadfile`): a test file
goes to one worker as a whole (its module-scoped fixture — a cluster of real processes, a Ceph — starts
once, as in one process), and the files of one group below go to one worker together, one after another:
they share something of this machine that two of them at once would collide on.

The groups are listed here by file, not marked with `xdist_group`: with pytest 9.2, xdist 3.8's
`--dist loadgroup` silently ignores the mark (pytest-dev/pytest-xdist#1386: it still writes the group into
the node id, which pytest no longer reads back), and the tests would run side by side unnoticed."""

from __future__ import annotations

from xdist.scheduler import LoadFileScheduling

MACHINE_NAMESPACE = "the-machines-network-namespace"
# Test file (as its node ids start) → its group.
GROUPS = {
    # Their router_cluster's agent owns this machine's own network namespace: it removes every ucb*/ucx*
    # device whose VNI its etcd does not know (the other cluster's bridges, its guest cut off) and rewrites
    # the nftables table `ucloud` with its own bridges only.
    "tests/e2e/test_reach_the_vm.py": MACHINE_NAMESPACE,
    "tests/e2e/test_debian_guest.py": MACHINE_NAMESPACE,
}


class FileOrGroupScheduling(LoadFileScheduling):
    """`--dist loadfile`, with the files of a group as one."""

    def _split_scope(self, nodeid: str) -> str:
        path = super()._split_scope(nodeid)
        return GROUPS.get(path, path)
