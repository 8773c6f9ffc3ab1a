#!/bin/bash
# Run ucloud's whole test suite on this machine: installs what the tests need first (deploy/install.sh),
# then runs pytest, whose fixtures start the real services (etcd, …) on free ports. Extra arguments
# go to pytest, e.g. `bash deploy/test.sh -k follow -x`.
#
# In two processes (pytest-xdist), each test file in one of them as a whole (tests/helpers/xdist_scheduling.py):
# most slow tests wait (leases, deadlines, guests booting under TCG), so on 2 cores two workers take about
# half the wall time of one. `-n N` among the arguments overrides the number (`-n 0`: one process), and
# `-p no:xdist` leaves xdist and its options out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
# In collection order (xdist would start the files with the most tests first, the quick unit tables):
# the slow files of clusters and guests (ceph/, cli/, e2e/, faults/) start early, and the many short
# files of unit/ near the end keep both workers busy until the last one.
parallel=(-n 2 --dist loadfile --no-loadscope-reorder)
for arg in "$@"; do
    case $arg in no:xdist | -pno:xdist) parallel=() ;; esac
done
# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
exec .venv/bin/pytest "${parallel[@]}" "$@"
