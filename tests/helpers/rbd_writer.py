"""A Ceph client as a separate process: takes the exclusive lock on an RBD image and writes to it
every 0.1 s, printing `WROTE` or `FAILED <errno>` (as a QEMU on a host thought dead would).

Usage: python -m tests.helpers.rbd_writer CEPH_CONF POOL IMAGE
"""

from __future__ import annotations

import sys
import time

import rados
import rbd


def main() -> None:
    conf, pool, name = sys.argv[1:4]
    cluster = rados.Rados(conffile=conf)
    cluster.connect()
    ioctx = cluster.open_ioctx(pool)
    image = rbd.Image(ioctx, name)
    image.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
    print("LOCKED", flush=True)
    while True:
        try:
            image.write(b"x" * 512, 0)
            image.flush()
            print("WROTE", flush=True)
        except rbd.Error as exc:
            print(f"FAILED {getattr(exc, 'errno', '?')}", flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    main()
