"""What lets deploy/test.sh run the suite in two pytest-xdist workers: a file stays in one worker, the
files of one group go to one worker together, every file whose cluster owns this machine's own network
namespace is in that group, and a test image asked for by both workers at once is built once."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from tests.helpers.tiny import _built, cache_dir
from tests.helpers.xdist_scheduling import (
    GROUPS,
    MACHINE_NAMESPACE,
    FileOrGroupScheduling,
)

TESTS = Path(__file__).resolve().parents[1]


def scope(nodeid: str) -> str:
    # The scope depends on the node id alone: no controller needed to ask.
    return FileOrGroupScheduling._split_scope(object.__new__(FileOrGroupScheduling), nodeid)


def test_a_file_goes_to_one_worker_and_a_group_of_files_together() -> None:
    assert scope("tests/api/test_vms.py::test_create_read_list") == "tests/api/test_vms.py"
    assert scope("tests/api/test_vms.py::test_x[a::b]") == "tests/api/test_vms.py"
    assert scope("tests/e2e/test_reach_the_vm.py::test_the_owner_logs_in") == MACHINE_NAMESPACE
    assert scope("tests/e2e/test_debian_guest.py::test_a_stock_debian_guest") == MACHINE_NAMESPACE


def test_every_file_whose_cluster_owns_the_machines_namespace_is_in_its_group() -> None:
    owners = {path.relative_to(TESTS.parent).as_posix() for path in TESTS.rglob("test_*.py")
              if "router_cluster(" in path.read_text() and path != Path(__file__)}
    assert owners, "no test uses router_cluster any more: this check checks nothing"
    assert {path for path in owners if GROUPS.get(path) != MACHINE_NAMESPACE} == set()
    assert all((TESTS.parent / path).is_file() for path in GROUPS), "a grouped file was moved or renamed"


def test_an_image_two_workers_ask_for_at_once_is_built_once(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    script = tmp_path / "build-slow-image.sh"
    # As the build scripts are: nothing to do when OUT_DIR holds a build, else a while to make one.
    script.write_text(f'out=$1; [ -e "$out/built" ] && exit 0\n'
                      f'echo start >> {log}; sleep 1; mkdir -p "$out"; touch "$out/built"; echo end >> {log}\n')
    try:
        workers = [threading.Thread(target=_built, args=(script,)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert log.read_text().split() == ["start", "end"]
    finally:
        cache = cache_dir(script)
        shutil.rmtree(cache, ignore_errors=True)
        cache.with_name(cache.name + ".lock").unlink(missing_ok=True)
