"""What the agent's deletion of a VM leaves in etcd: nothing of the VM — not its record or claims,
and not its entry in its networks' `attached` (kept, it grew the network's record by every VM it
ever had), nor its resources in its owner's usage. Against a real etcd, the agent on the fake hypervisor."""

from __future__ import annotations

from tests.helpers.cluster import request_deletion, vm, wait_for
from tests.integration.test_follow import a_vm
from tests.integration.test_supervision import Running
from ucloud_common.claim import MACS, VM_NAMES, Claim, mac_claim, owned
from ucloud_common.network import NETWORKS, Network
from ucloud_common.states import Status
from ucloud_common.quota import USAGES, change, charged
from ucloud_common.store import Put, Store
from ucloud_common.vm import NIC, VMS, placed_on
from ucloud_vm.agent import Agent

MAC = "02:00:00:00:00:01"


def test_the_agent_deletes_a_vm_with_its_claims_and_its_place_on_its_network(store: Store, agent: Agent) -> None:
    store.create(NETWORKS, "net", Network(uuid="net", owner="alice", name="net", vxlan_id=7, attached=("gone", "vm1")))
    # As the API creates one (its NIC, the MAC's and the name's claims) and the scheduler places it.
    created = a_vm("vm1").evolve(networks=(NIC(network="net", mac=MAC, slot=16),), status=Status.SCHEDULED_DEPLOY,
                                 **placed_on("h1"))
    store.transact([Put(VMS, "vm1", created, 0), charged(store, "alice", change(None, created))])
    store.create(MACS, mac_claim(MAC), Claim(holder="vm1"))
    store.create(VM_NAMES, owned("alice", "vm1"), Claim(holder="vm1"))
    running = Running(agent.run)
    try:
        wait_for(lambda: vm(store, "vm1").status is Status.RUNNING, 15, "vm1 running")
        request_deletion(store, "vm1")
        wait_for(lambda: store.get(VMS, "vm1") is None, 15, "vm1 deleted")
    finally:
        running.end()
    assert store.get(MACS, mac_claim(MAC)) is None and store.get(VM_NAMES, owned("alice", "vm1")) is None
    usage = store.get(USAGES, "alice")
    assert usage is not None and (usage.value.vms, usage.value.cpu, usage.value.ram) == (0, 0, 0), \
        "the VM's resources were not released with its record"
    network = store.get(NETWORKS, "net")
    assert network is not None and network.value.attached == ("gone",), "vm1 is still listed on its network"
