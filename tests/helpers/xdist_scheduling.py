"""How deploy/test.sh shares the suite between its pytest-xdist workers: a test file goes to one worker
as a whole (its module-scoped fixture — a cluster of real processes, a Ceph — starts once, as in one
process), except that the files of one `xdist_group` go to one worker together, one after another:
they share something of this machine that two of them at once would collide on (the mark says what)."""

from __future__ import annotations

from xdist.scheduler import LoadGroupScheduling


class FileOrGroupScheduling(LoadGroupScheduling):
    """`--dist loadgroup`, with an unmarked test's scope its file instead of itself."""

    def _split_scope(self, nodeid: str) -> str:
        group = super()._split_scope(nodeid)
        return group if group != nodeid else nodeid.split("::", 1)[0]
