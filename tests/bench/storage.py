"""Benchmark of disks and images: provisioning a VM disk (RBD clone + resize vs a local qcow2
overlay) and what image-scanner's safety costs over a plain `qemu-img convert` of the same file.

Starts its own one-node Ceph (on /dev/shm). Prints median / p99 provisioning times and conversion
throughput in MB/s for a 1 GiB image, as qcow2 and as raw: image-scanner checking the copy by the
file's content digest (what file-scan records now) and by its sha512 alone (a file registered before
digests were kept), each beside a plain `qemu-img convert` timed right before it, the medians of
`--rounds` such pairs (the machine is shared: one pair varied by ±20%, and only figures taken minutes
apart compare); and what file-scan's hashing of the raw file costs with and without the content digest.

    .venv/bin/python -m tests.bench.storage [--disks 20] [--size-mib 1024] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.bench.stats import percentile
from tests.helpers.ceph import ceph_with_tiny
from tests.helpers.tiny import tiny_image
from ucloud_common.config import load_settings
from ucloud_common.contentdigest import digest_of
from ucloud_common.file import File
from ucloud_common.image import Image
from ucloud_common.imagecopy import sha512_of
from ucloud_common.imagestore import local_image_path
from ucloud_common.specs import Specs
from ucloud_common.vm import VM
from ucloud_filescan.scan import Seen, hashes_of
from ucloud_imagescanner.scanner import create_image
from ucloud_vm.storage import LocalStorage, RBDStorage


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disks", type=int, default=20)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5, help="conversions of each kind (their median is printed)")
    args = parser.parse_args()
    tiny = tiny_image()
    with tempfile.TemporaryDirectory(prefix="ucloud-bench-", dir="/dev/shm") as tmp:
        work = Path(tmp)
        with ceph_with_tiny(work / "ceph") as ceph:
            (work / "images").mkdir()
            local_image_path(work / "images", "tiny").write_bytes((tiny / "tiny.raw").read_bytes())
            rbd_storage = RBDStorage(ceph, "images", "vms")
            local = LocalStorage(work / "images", work / "disks")
            vms = [VM(uuid=f"bench-{i}", owner="b", name=f"b{i}", image="tiny", specs=Specs(cpu=1, ram=1, ssd=10))
                   for i in range(args.disks)]
            rbd_times = [timed(lambda vm=vm: rbd_storage.create(vm)) for vm in vms]
            local_times = [timed(lambda vm=vm: local.create(vm)) for vm in vms]
            for vm in vms:
                rbd_storage.delete(vm)
                local.delete(vm)

            # A 1 GiB image, half of it random data (incompressible), the other half a hole (as truncate
            # leaves it, and as both copies skip it), as raw and qcow2; and as raw with its zeros written,
            # as an upload through the API writes them (both copies read them and compare them with zeros).
            uploads = work / "www" / "bench"
            uploads.mkdir(parents=True)
            raw = uploads / "big.raw"
            with open(raw, "wb") as out:
                for _ in range(args.size_mib // 2):
                    out.write(os.urandom(1 << 20))
                out.truncate(args.size_mib << 20)
            qcow2 = uploads / "big.qcow2"
            subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
            written = uploads / "written.raw"
            written.write_bytes(raw.read_bytes())
            settings = load_settings(upload_dir=work / "www", image_dir=work / "store")
            results = {}
            size_mb = (args.size_mib << 20) / 1e6
            files = ((qcow2, "qcow2", "qcow2"), (raw, "raw", "raw"), (written, "raw", "raw, zeros written"))
            for path, fmt, what in files:
                sha512 = hashlib.sha512(path.read_bytes()).hexdigest()
                registered = {"digest": digest_of(path), "sha512 only": ""}
                for check, digest in registered.items():
                    file = File(uuid="f", owner="bench", filename=path.name, size=path.stat().st_size, sha512=sha512,
                                digest=digest, mtime=datetime.now(UTC))
                    image = Image(uuid=f"img-{fmt}", owner="bench", name=fmt, store_name="local")

                    def pair(fmt: str = fmt, path: Path = path, image: Image = image, file: File = file
                             ) -> tuple[float, float]:
                        plain = timed(lambda: subprocess.run(
                            ["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(work / "plain.raw")],
                            check=True))
                        (work / "plain.raw").unlink()
                        safe = timed(lambda: create_image(settings, image, file))
                        local_image_path(settings.image_dir, image.uuid).unlink()
                        return plain, safe

                    pairs = [pair() for _ in range(args.rounds)]
                    plain = statistics.median(p for p, _ in pairs)
                    safe = statistics.median(s for _, s in pairs)
                    results[f"{what}, by {check}"] = {
                        "plain_s": round(plain, 2), "ucloud_s": round(safe, 2), "plain_mb_s": round(size_mb / plain),
                        "ucloud_mb_s": round(size_mb / safe), "overhead_pct": round(100 * (safe - plain) / plain)}
            info = raw.stat()
            seen = Seen("bench", raw.name, raw, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            hashing = {"sha512": timed(lambda: sha512_of(raw)),
                       "sha512 + digest": timed(lambda: hashes_of(seen, settings.image_max_size * 2**30))}
    summary = {
        "disks": args.disks,
        "rbd_clone_resize_ms": {"median": round(statistics.median(rbd_times) * 1000, 1), "p99": round(percentile(rbd_times, 99) * 1000, 1)},
        "local_overlay_ms": {"median": round(statistics.median(local_times) * 1000, 1), "p99": round(percentile(local_times, 99) * 1000, 1)},
        "conversion": results,
        "filescan_hashing_mb_s": {what: round(((args.size_mib << 20) / 1e6) / took) for what, took in hashing.items()},
    }
    print(f"provisioning a VM disk: RBD clone + resize median {summary['rbd_clone_resize_ms']['median']} ms "
          f"(p99 {summary['rbd_clone_resize_ms']['p99']}); local qcow2 overlay median "
          f"{summary['local_overlay_ms']['median']} ms (p99 {summary['local_overlay_ms']['p99']})")
    for what, r in results.items():
        print(f"{args.size_mib} MiB {what}: plain qemu-img convert {r['plain_mb_s']} MB/s, image-scanner "
              f"{r['ucloud_mb_s']} MB/s ({r['overhead_pct']:+d}%)")
    print("file-scan reading the raw file: " + ", ".join(f"{what} {mb_s} MB/s"
                                                        for what, mb_s in summary["filescan_hashing_mb_s"].items()))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
