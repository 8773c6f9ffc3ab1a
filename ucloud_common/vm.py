"""The VM family: `/v1/vm/<uuid>`.

Field families and their one writer each: the spec (`owner`, `name`, `specs`, `image`, `networks`,
`ssh_keys`, `storage`) and the request (`requested`, `request_id`, `generation`, `reboot_generation`,
`migrate_to`, `migrate_generation`, `resize`) belong to the API; placement (`hostname`) to the
scheduler — and to the source agent of a live migration, which hands the VM over when its target runs
it; a resize the scheduler found room for is carried into `specs` by the scheduler, which clears
`resize` in the same write (the API writes `resize` only while it is None, so they never race); what is
true (`status`, `observed_generation`, `error`, `restarts`, `started_at`, `disk_clients`, `deadline`,
`nic_errors`, `guacamole`, `migration`, `migrated_generation`) to the scheduler and the agents, as
`states.TRANSITIONS` and `states.MIGRATION_STEPS` allow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from ucloud_common.host import HOSTS
from ucloud_common.record import Family, Name, Record
from ucloud_common.specs import Specs
from ucloud_common.states import Action, ActionRefused, MigrationPhase, Requested, Status, check_action


# The PCI slots a VM's NICs are put in, one each, kept for the NIC's life: a live migration's
# target must build the very device tree the source has, and hot-plugs and unplugs would otherwise
# leave the source's NICs in slots its command line would not give them. Clear of the slots QEMU
# gives the devices it places itself from slot 2 on (VGA, the disk, the seed drive, NICs without a
# slot: a handful, far from 16).
NIC_SLOTS = range(16, 24)


class NIC(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    network: str  # the network's uuid
    mac: str
    # None for a NIC made before slots were kept: QEMU places it, as then.
    slot: int | None = Field(None, ge=NIC_SLOTS.start, lt=NIC_SLOTS.stop)


def free_slot(nics: tuple[NIC, ...]) -> int:
    """The lowest NIC slot none of `nics` has (the API allows no more NICs than there are slots)."""
    return next(s for s in NIC_SLOTS if all(n.slot != s for n in nics))


class VNCEndpoint(BaseModel):
    """A VNC server of the VM's QEMU on TCP, for Guacamole's guacd: where, and its VNC password (VNC
    authentication reads at most 8 characters of it)."""

    model_config = ConfigDict(frozen=True)

    address: str
    port: int = Field(ge=1, le=65535)
    password: str = Field(min_length=8, max_length=8)


def _host_key(value: str) -> str:
    """"" or a host's key: `VM.host` names the host from it, and a daemon must never meet a key
    that names no host (`InvalidRecord`, a ValueError, makes the whole record invalid)."""
    if value:
        HOSTS.name_of(value)
    return value


class Migration(BaseModel):
    """A live migration under way: one record the three parties meet in, each moving it only as
    `MIGRATION_STEPS` says (the scheduler makes it CHOSEN; the target agent LISTENING or FAILED; the
    source agent RUNNING, and ends it — the VM on the target, or still on the source — by removing it)."""

    model_config = ConfigDict(frozen=True)

    source: Name
    target: Name
    phase: MigrationPhase = MigrationPhase.CHOSEN
    request: int = Field(0, ge=0)  # the `migrate_generation` it serves (0: a host's drain asked for it)
    address: str = ""  # where the target's QEMU listens (host:port), once LISTENING
    # The Ceph client instances of the target's QEMU: a fence of the VM covers them too while the
    # migration may have handed the disk over.
    target_clients: tuple[str, ...] = ()
    error: str = ""


class VM(Record):
    uuid: Name
    owner: Name
    name: Name
    specs: Specs
    image: str
    storage: str = "local"
    hostname: Annotated[str, AfterValidator(_host_key)] = ""  # the host's key, e.g. /v1/host/h1 (the seed's shape): read it as `host`
    requested: Requested = Requested.RUNNING
    # The X-Request-Id of the API request that last wrote the spec or the request: the scheduler and
    # the agent log it with what they do about the VM, and put it in the events they write.
    request_id: str = ""
    status: Status = Status.REQUESTED_NEW
    generation: int = Field(1, ge=1)  # bumped by the API with every accepted request
    observed_generation: int = Field(0, ge=0)  # the generation the agent last acted on
    reboot_generation: int = Field(0, ge=0)  # a reboot is wanted while this exceeds observed_generation
    migrate_to: str = ""  # "*": any host the scheduler finds; else the host's key
    migrate_generation: int = Field(0, ge=0)  # the `generation` of the last migrate request
    migration: Migration | None = None
    migrated_generation: int = Field(0, ge=0)  # the migrate request last ended (moved or failed)
    error: str = ""
    restarts: int = Field(0, ge=0)  # crashes in a row, each followed by a restart
    started_at: datetime | None = None  # when the agent last started (or restarted) its QEMU
    # The Ceph client instances (ip:port/nonce) that had the VM's RBD disk open once its QEMU
    # started: a fence blocklists them even if their watch has expired since (a QEMU that reached
    # no OSD for 30 s is no longer a watcher, yet writes again the moment it can).
    disk_clients: tuple[str, ...] = ()
    # Until when the agent waits for what it did last: the guest to power off (STOPPING), the
    # backoff before a restart (KILLED after a crash), the next attempt at a failed deletion.
    deadline: datetime | None = None
    networks: tuple[NIC, ...] = ()
    # NICs of `networks` the agent could not give the VM, by MAC, with the reason (a network gone,
    # a MAC another VM has, an underlay that does not work): the VM runs without them, and they are
    # tried again at its next start.
    nic_errors: dict[str, str] = Field(default_factory=dict)
    # The TCP VNC server of the VM's running QEMU, as its agent saw it (UCLOUD_GUACAMOLE_VNC_ADDRESS on
    # its host); None while no QEMU with one runs. It holds a password: the API shows it only on
    # GET /vms/<uuid>/guacamole, never in a VM's answers, and the OpenAPI document leaves it out.
    guacamole: SkipJsonSchema[VNCEndpoint | None] = None
    ssh_keys: tuple[str, ...] = ()
    anti_affinity: str = ""
    # The specs a resize asks for (the API writes it, for a STOPPED VM); None once the scheduler has
    # carried it into `specs` or refused it (with the reason in `error`). See `allocation.resize_delta`.
    resize: Specs | None = None

    def wants_migration(self) -> bool:
        """A migrate request that no migration has served yet."""
        return bool(self.migrate_to) and self.migration is None and self.migrate_generation > self.migrated_generation

    @property
    def host(self) -> str:
        """The name of the host the VM is placed on; "" until scheduled. (The record keeps the
        seed's shape, the host's key; code asks for the name, and writes `placed_on(name)`.)"""
        return HOSTS.name_of(self.hostname) if self.hostname else ""


def placed_on(host: str) -> dict[str, str]:
    """The fields that place a VM on `host` (a name; "" for none), for `VM.evolve(**placed_on(h))`."""
    return {"hostname": HOSTS.key(host) if host else ""}


def request_fields(vm: VM, action: Action) -> dict[str, Any]:
    """The request fields the API writes for `action` on `vm`: what is `requested`, and a new
    generation (which a reboot also records). `ActionRefused` if the VM's status does not allow it, or
    if a resize waits for the scheduler (started now, the VM would run with the old specs)."""
    requested = check_action(action, vm.status, vm.requested)
    if vm.resize is not None and action in (Action.START, Action.RESIZE):
        raise ActionRefused(action, vm.status, "a resize of the VM waits for the scheduler to check its host's "
                            "room (a moment; its error then says if it was refused)")
    generation = vm.generation + 1
    fields: dict[str, Any] = {"requested": requested, "generation": generation}
    if action is Action.REBOOT:
        fields["reboot_generation"] = generation
    return fields


VMS: Family[VM] = Family("/v1/vm/", VM, identity="uuid")
