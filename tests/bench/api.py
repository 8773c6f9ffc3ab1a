"""Benchmark of ucloud-api under gunicorn on this machine, with 10,000 VMs in etcd.

Starts its own etcd (on /dev/shm) and `ucloud-api serve`, loads the VMs, then drives GET one,
GET list and POST create with wrk (Debian's `wrk`) and prints requests/s and p50 / p99 latency —
each also as a share of the ceiling: a bare Flask app answering one VM-sized JSON
(`tests.bench.ceiling`) under the same gunicorn settings, measured in the same run right before and
right after each figure (the CPU is shared, and its load changes from minute to minute). It also prints
what the API's read cache holds in memory per 10,000 VMs (tracemalloc, in this process).

    .venv/bin/python -m tests.bench.api [--vms 10000] [--seconds 10] [--connections 16] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tests.helpers.etcd import EtcdServer, free_port
from ucloud_api.auth import create_user
from ucloud_api.cache import ReadCache
from ucloud_api.main import GUNICORN_CONFIG
from ucloud_api.views.vms import rendered
from ucloud_common.config import load_settings
from ucloud_common.image import IMAGES, Image, ImageStatus
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.user import Role
from ucloud_common.vm import VMS, VM

BIN = Path(sys.executable).parent

POST_SCRIPT = """
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end
counter = 0
request = function()
  counter = counter + 1
  local body = '{"name": "b' .. id .. '-' .. counter .. '", "specs": {"cpu": 1, "ram": 1, "ssd": 10}, "image": "tiny"}'
  return wrk.format("POST", "/api/v1/vms", nil, body)
end
"""


def load(store: Store, count: int) -> str:
    """Put `count` VMs of 100 owners into etcd; return the uuid of one of user0's."""
    sample = ""
    batch = []
    for i in range(count):
        vm = VM(uuid=str(uuid.uuid4()), owner=f"user{i % 100}", name=f"vm{i}", specs=Specs(cpu=2, ram=4, ssd=40),
                image="tiny", status=Status.RUNNING, hostname=f"/v1/host/h{i % 50}")
        batch.append(store.client.transactions.put(VMS.key(vm.uuid), VMS.encode(vm)))
        if i % 100 == 0:
            sample = sample or vm.uuid
        if len(batch) == 100:
            store.client.transaction(compare=[], success=batch, failure=[])
            batch = []
    if batch:
        store.client.transaction(compare=[], success=batch, failure=[])
    return sample


def wrk(url: str, token: str, seconds: int, connections: int, script: str | None = None) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
            "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script or "")
    if script:
        args += ["-s", lua.name]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    os.unlink(lua.name)

    def ms(label: str) -> float:
        match = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99"), "non_2xx": float(errors.group(1)) if errors else 0}


def serve(command: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        except urllib.error.HTTPError:
            return process  # it answers (404)
        except OSError:
            time.sleep(0.1)
    return process


def cache_memory(store: Store) -> int:
    """Bytes the API's read cache holds once it has loaded every VM (tracemalloc)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = ReadCache(store, rendered).start()
    while not cache.vms.wait_for(0, 1):
        pass
    held = tracemalloc.get_traced_memory()[0] - before
    cache.stop()
    tracemalloc.stop()
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install --no-install-recommends wrk")

    with tempfile.TemporaryDirectory(prefix="ucloud-bench-", dir="/dev/shm") as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd")
        etcd.start()
        api = ceiling = None
        try:
            settings = load_settings(etcd_endpoints=etcd.endpoint)
            store = Store(settings)
            _, admin = create_user(store, "admin", Role.ADMIN)
            _, user = create_user(store, "user0", Role.USER)
            store.create(IMAGES, "tiny", Image(uuid="tiny", owner="admin", name="tiny", store_name="local",
                                                public=True, status=ImageStatus.CREATED))
            started = time.monotonic()
            one = load(store, args.vms)
            print(f"loaded {args.vms} VMs in {time.monotonic() - started:.1f} s")
            held = cache_memory(store)
            print(f"the read cache holds {held / 2**20:.1f} MiB for {args.vms} VMs "
                  f"({held / args.vms * 10_000 / 2**20:.1f} MiB per 10,000 VMs)")
            port, ceiling_port = free_port(), free_port()
            # No per-user limit: user0 owns 100 VMs already, and every POST would be a 409.
            env = {**os.environ, "UCLOUD_ETCD_ENDPOINTS": etcd.endpoint, "UCLOUD_LOG_LEVEL": "WARNING",
                   "UCLOUD_MAX_VMS_PER_USER": "1000000", "UCLOUD_USER_WRITE_RATE": "",
                   **{f"UCLOUD_MAX_{what}_PER_USER": "100000000" for what in ("CPU", "RAM", "SSD")}}
            workers = ["--workers", str(args.workers)] if args.workers else []
            api = serve([str(BIN / "ucloud-api"), "serve", "--bind", f"127.0.0.1:{port}", *workers], env, port)
            ceiling = serve([sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONFIG), "--bind",
                             f"127.0.0.1:{ceiling_port}", *workers, "tests.bench.ceiling:app"], env, ceiling_port)
            base = f"http://127.0.0.1:{port}"
            ceiling_url = f"http://127.0.0.1:{ceiling_port}/vm"
            ucloud = {
                "GET one": (f"{base}/api/v1/vms/{one}", user, args.connections, None),
                "GET list (user, 100 of 10k VMs)": (f"{base}/api/v1/vms", user, args.connections, None),
                "GET list (admin, first 500)": (f"{base}/api/v1/vms?limit=500", admin, 4, None),
                "GET list (admin, all VMs)": (f"{base}/api/v1/vms", admin, 2, None),
                "POST create": (f"{base}/api/v1/vms", user, args.connections, POST_SCRIPT),
            }
            # The CPU is shared (with etcd, wrk, and whatever else runs): the ceiling is measured
            # right before and right after each figure, which is read as a share of their mean (the
            # load drifts within minutes: one side alone reads the drift as ucloud's).
            runs, ceilings = {}, [wrk(ceiling_url, user, args.seconds, args.connections)]
            for name, (url, token, connections, script) in ucloud.items():
                runs[name] = wrk(url, token, args.seconds, connections, script)
                ceilings.append(wrk(ceiling_url, user, args.seconds, args.connections))
                runs[name]["of_ceiling"] = runs[name]["rps"] / ((ceilings[-2]["rps"] + ceilings[-1]["rps"]) / 2)
            print(f"{'request':36} {'req/s':>9} {'of ceiling':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
            for c in sorted(ceilings, key=lambda c: c["rps"]):
                print(f"{'ceiling: bare Flask, one VM JSON':36} {c['rps']:9.0f} {'':>10} {c['p50_ms']:8.1f} "
                      f"{c['p99_ms']:8.1f} {c['non_2xx']:8.0f}")
            for name, r in runs.items():
                print(f"{name:36} {r['rps']:9.0f} {r['of_ceiling']:10.0%} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
                      f"{r['non_2xx']:8.0f}")
            print(json.dumps({"vms": args.vms, "cpus": os.cpu_count(), "cache_bytes": held, "ceilings": ceilings,
                              **runs}))
        finally:
            for process in (api, ceiling):
                if process is not None:
                    process.terminate()
                    process.wait()
            etcd.stop()


if __name__ == "__main__":
    main()
