"""A host agent as its own process (so that a test can `kill -9` it), whose QEMUs and VM network
devices live in a network namespace standing in for a host, while it reaches etcd from the
namespace the tests run in. Built as `ucloud-vm run` builds one; runs until SIGTERM.

    python -m tests.helpers.netns_agent NAME NETNS ADDRESS RUN_DIR IMAGE_DIR DISK_DIR [--router] < settings.json
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from ucloud_common.config import Settings
from ucloud_common.network import NETWORKS
from ucloud_common.specs import Specs
from ucloud_common.store import Store
from ucloud_vm.agent import Agent, HostSpec
from ucloud_vm.hostnet import HostNetwork, Underlay
from ucloud_vm.qemu import QemuDriver
from ucloud_vm.radvd import Radvd
from ucloud_vm.storage import LocalStorage
from ucloud_vm.vmnet import VMNetworks


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("name", "netns", "address", "run_dir", "image_dir", "disk_dir"):
        parser.add_argument(name)
    parser.add_argument("--router", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.model_validate_json(sys.stdin.read()).model_copy(update={"router": args.router})
    store = Store(settings)
    routed = (lambda: {n.value.vxlan_id for n in store.list(NETWORKS).items.values()}) if args.router else frozenset
    run_dir = Path(args.run_dir)
    networks = VMNetworks(store, args.name, HostNetwork(netns=args.netns, router_of=routed),
                          Underlay(address=args.address), Radvd(run_dir / "radvd", netns=args.netns),
                          router=args.router)
    agent = Agent(store, settings, HostSpec(args.name, args.address, Specs(cpu=2, ram=2, ssd=10)),
                  QemuDriver(run_dir, "tcg", netns=args.netns),
                  {"local": LocalStorage(Path(args.image_dir), Path(args.disk_dir))}, networks)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        agent.run(stop)
    finally:
        store.close()
    sys.exit(1 if agent.failure else 0)


if __name__ == "__main__":
    main()
