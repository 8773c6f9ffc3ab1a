"""Configuration: `UCLOUD_*` environment variables over an optional file.

The file (`/etc/ucloud/ucloud.conf`, or the path in `UCLOUD_CONFIG`) holds the same `UCLOUD_*=value`
lines as the environment, so that one file serves the daemons, the CLI tools and systemd's
`EnvironmentFile=`. The environment wins over the file. Timing invariants are checked when the
configuration loads, so a daemon refuses to start with numbers that would make it misbehave later.
"""

from __future__ import annotations

import ipaddress

import os
from pathlib import Path
from typing import Annotated, Literal, Self

from limits import parse_many
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CONFIG_FILE = Path("/etc/ucloud/ucloud.conf")


class EtcdEndpoint(BaseModel, frozen=True):
    host: str
    port: int = Field(ge=1, le=65535)

    @classmethod
    def parse(cls, text: str) -> EtcdEndpoint:
        host, sep, port = text.strip().rpartition(":")
        if not sep or not host:
            raise ValueError(f"etcd endpoint {text!r} is not host:port")
        return cls(host=host.strip("[]"), port=int(port))

    @property
    def netloc(self) -> str:
        """host:port, with an IPv6 address in brackets as gRPC and URLs need it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.netloc


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UCLOUD_", extra="ignore", frozen=True)

    etcd_endpoints: Annotated[list[EtcdEndpoint], NoDecode] = Field(
        default_factory=lambda: [EtcdEndpoint(host="127.0.0.1", port=2379)],
        description="Comma-separated host:port of the etcd cluster's members; the client fails over "
        "between them.",
    )
    etcd_ca_cert: Path | None = Field(None, description="CA bundle; setting it turns TLS on.")
    etcd_cert_cert: Path | None = Field(None, description="Client certificate for mutual TLS.")
    etcd_cert_key: Path | None = Field(None, description="Client key for mutual TLS.")
    etcd_user: str | None = None
    etcd_password: str | None = Field(None, repr=False)
    etcd_timeout: float = Field(
        5.0, gt=0, description="Seconds any single etcd call may take before the store is declared "
        "unreachable; a daemon then takes its safe branch instead of hanging."
    )
    cas_attempts: int = Field(
        30, ge=1, description="Compare-and-swap attempts before an update gives up with a conflict "
        "error. Each lost race means another writer made progress, so this only runs out under a "
        "pathological write storm on one key."
    )

    host_lease_ttl: int = Field(
        10, ge=2, description="Seconds after an agent's last heartbeat until its host is DOWN and its "
        "VMs are rescheduled. Shorter means faster failover but more false alarms on a loaded host."
    )
    heartbeat_interval: float = Field(
        2.0, gt=0, description="Seconds between an agent's lease keep-alives."
    )
    leader_lease_ttl: int = Field(
        10, ge=2, description="Seconds a dead scheduler leader keeps the leadership before a standby "
        "takes over."
    )
    resync_interval: float = Field(
        60.0, gt=0, description="Seconds between full relists of a daemon's prefix: repairs anything "
        "a lost watch event missed, at the cost of one list."
    )

    ipv6_pool: str = Field("fd75:636c:6f75::/48", description="Where a network created without an IPv6 "
                           "prefix gets its /64 (at random, never one in use). The default is a unique "
                           "local /48: reachable inside the cloud; give a global one to route VMs out.")

    @field_validator("ipv6_pool")
    @classmethod
    def _a_pool_of_64s(cls, value: str) -> str:
        network = ipaddress.IPv6Network(value, strict=True)  # a ValueError names what is wrong
        if network.prefixlen > 64:
            raise ValueError(f"{value} holds no /64")
        return str(network)

    image_stores: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["local"],
        description="Comma-separated names of the image stores users may create images in.",
    )

    cpu_allocation_ratio: float = Field(
        4.0, gt=0, le=64, description="Virtual CPUs a host may give per physical CPU (vCPUs mostly idle)."
    )
    ram_allocation_ratio: float = Field(
        1.0, gt=0, le=4, description="RAM over-commit; above 1 a busy host swaps or kills guests."
    )
    disk_allocation_ratio: float = Field(
        1.0, gt=0, le=16, description="Disk over-commit; copy-on-write disks start small, but may fill."
    )
    placement: Literal["spread", "pack"] = Field(
        "spread", description="spread: least loaded host first (fewer VMs hit by one host's failure); "
        "pack: most loaded host that fits first (frees whole hosts)."
    )
    migrations_per_host: int = Field(2, ge=1, le=64, description="Live migrations a host sends at once "
                                     "(more wait their turn): each takes network bandwidth and CPU.")
    migrations_per_cluster: int = Field(8, ge=1, le=1024, description="Live migrations under way at once in "
                                        "the whole cluster.")
    migration_prepare_timeout: float = Field(60.0, gt=0, description="Seconds the target host has to get a "
                                             "QEMU ready to receive a migrating VM; then the migration fails.")
    migration_timeout: float = Field(300.0, gt=0, description="Seconds a live migration may take once it "
                                     "sends (a guest that dirties memory faster than the network carries it "
                                     "never converges); then it is cancelled and the VM runs on where it was.")
    migration_downtime_ms: int = Field(100, ge=1, le=60_000, description="The longest pause of the guest "
                                       "QEMU may plan for the last copy of a live migration (QMP downtime-limit).")
    migration_bandwidth_mib: int = Field(0, ge=0, description="MiB/s a live migration may use (0: no limit).")
    fence_command: str = Field(
        "", description="Command run (with the host's name and address appended) to fence a dead host "
        "before its VMs restart elsewhere, e.g. an IPMI power-off. Exit 0 means fenced."
    )
    fence_timeout: float = Field(60.0, gt=0, description="Seconds a fence command may take.")

    run_dir: Path = Field(Path("/var/lib/ucloud/run"), description="Where a host agent keeps its VMs' "
                          "runtime files (QMP, VNC and serial sockets and logs), one directory per agent.")
    image_dir: Path = Field(Path("/var/lib/ucloud/images"), description="The local image store: one raw "
                            "file per image.")
    disk_dir: Path = Field(Path("/var/lib/ucloud/disks"), description="Where the local storage backend "
                           "keeps VM disks (qcow2 overlays on their image).")
    hdd_dir: Path | None = Field(None, description="Where the local storage backend keeps VMs' HDD disks (empty "
                                 "qcow2 files), e.g. on a file system of spinning disks; a host offers its size "
                                 "as HDD capacity. Unset: local VMs get no HDD disk on this host.")
    accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="auto: KVM if a probe boot under KVM succeeds at agent start, else TCG. "
        "/dev/kvm existing is not proof that it boots a guest."
    )
    probe_image_dir: Path = Field(Path("/var/lib/ucloud/tiny"), description="Holds vmlinuz and initrd.gz of "
                                  "the tiny test image, booted under KVM to decide whether KVM works.")
    agent_workers: int = Field(32, ge=1, le=256, description="VMs a host agent works on at once. Starting a "
                               "QEMU mostly waits (for QEMU to open its disk and daemonize): after a host "
                               "died, 20 VMs arriving at once started 6 s later with 8 workers.")
    shutdown_timeout: float = Field(60.0, gt=0, description="Seconds a guest gets to power off after ACPI "
                                    "shutdown before QEMU is stopped hard.")
    max_restarts: int = Field(5, ge=0, description="Consecutive crashes after which a VM is left in ERROR "
                              "instead of being restarted again.")
    stable_after: float = Field(600.0, gt=0, description="Seconds a VM must have run since its last start for "
                                "its next crash to count as the first in a row again: crashes weeks apart "
                                "are not a crash loop.")

    monitor_interval: float = Field(1.0, gt=0, description="Seconds between a host agent's looks at each "
                                    "QEMU whose events it cannot follow (one started before QEMUs got an "
                                    "events monitor): a crash becomes KILLED within this. The others say themselves "
                                    "when something happens.")
    monitor_sweep_interval: float = Field(30.0, gt=0, description="Seconds between a host agent's looks at "
                                          "every QEMU, even those whose events it follows: a safety net "
                                          "for an event missed.")
    host_check_interval: float = Field(5.0, gt=0, description="Seconds between a host agent's checks that "
                                       "its host is recorded UP (a scheduler may have judged it dead "
                                       "during a partition).")
    qmp_timeout: float = Field(5.0, gt=0, description="Seconds a QEMU gets to greet and to answer one QMP "
                               "command; a QEMU stuck in a disk request to a fenced Ceph never does.")
    store_retry: float = Field(1.0, gt=0, description="Seconds after which a VM whose step met an "
                               "unreachable etcd or lost races is looked at again (every step is idempotent).")
    restart_backoff_max: float = Field(60.0, gt=0, description="The longest wait before restarting a crashed "
                                       "VM; the wait doubles from 1 s with each crash in a row.")
    failure_retry: float = Field(300.0, gt=0, description="Seconds after which a VM whose reconcile failed "
                                 "with an unexpected error (a bug) is tried again: logged once, never a "
                                 "hot loop.")
    io_retry: float = Field(10.0, gt=0, description="Seconds between attempts to resume a guest that QEMU "
                            "paused on a disk write error (a full disk or pool), until the disk takes "
                            "writes again.")
    scheduler_cadence: float = Field(1.0, gt=0, description="A scheduler cycle runs at least this often, so "
                                     "a lost wake-up costs this long at most.")
    fence_retry: float = Field(30.0, gt=0, description="Seconds after a failed fence of a host before the "
                               "next attempt (a fence command may be expensive: a power cycle).")

    underlay_device: str = Field("", description="The interface VXLAN packets of VM networks leave this host "
                                 "by. With no UCLOUD_UNDERLAY_ADDRESS, its first global address (IPv6 first) is "
                                 "the host's underlay address. VM networks get its MTU less the VXLAN overhead "
                                 "(50 bytes over IPv4, 70 over IPv6).")
    underlay_address: str = Field("", description="This host's underlay address (IPv4 or IPv6), which the other "
                                  "hosts of a network send its VXLAN packets to; with no UCLOUD_UNDERLAY_DEVICE, "
                                  "the interface holding it is the underlay device.")
    vxlan_port: int = Field(4789, ge=1, le=65535, description="The UDP port of VXLAN on every host (IANA's "
                            "4789); all hosts must agree on it.")
    console_port: int = Field(6080, ge=1, le=65535, description="The port of this host's console proxy "
                              "(`ucloud-vm console-proxy`): websockets to its VMs' screens and serial consoles.")
    console_cert: Path | None = Field(None, description="A PEM certificate (with its chain) for the console proxy: "
                                      "with it, consoles are wss://; without, ws:// (then put TLS in front).")
    console_key: Path | None = Field(None, description="The console certificate's PEM private key.")
    guacamole_vnc_address: str = Field("", description="An address of this host on which each VM's QEMU also "
                                       "listens for VNC over TCP, with an 8-character VNC password, for a Guacamole "
                                       "guacd to connect to (`GET /api/v1/vms/<uuid>/guacamole`). Empty: no TCP VNC "
                                       "(the default). Put it on a management network only guacd reaches: VNC's "
                                       "DES password is the only lock.")
    guacamole_vnc_ports: int = Field(100, ge=1, le=65536 - 5900, description="How many TCP ports, from 5900, "
                                     "the VMs of this host may take for Guacamole (each QEMU takes the first free "
                                     "one): the range a firewall opens to guacd; at most this many VMs get one. "
                                     "It may not hold the console proxy's port, which a QEMU could take first.")
    guacamole_secret_key: str = Field("", repr=False, pattern="^([0-9A-Fa-f]{32})?$", description="guacamole-auth-json's "
                                      "json-secret-key (32 hex digits): with it, the API also answers the signed and "
                                      "encrypted login data for Guacamole's `?data=`; without, the plain JSON only.")

    @field_validator("guacamole_vnc_address")
    @classmethod
    def _one_address(cls, value: str) -> str:
        if not value:
            return value
        address = ipaddress.ip_address(value.strip("[]"))  # a ValueError names what is wrong
        # A wildcard would put every VM's screen, behind an 8-character password, on every
        # interface of the host, public ones included.
        if address.is_unspecified:
            raise ValueError(f"{value} is every address of the host: give one that only guacd reaches")
        return str(address)
    router: bool = Field(False, description="This host is the router of every VM network: it joins each "
                         "network (also without a VM of it), takes <prefix>::1 on its bridge, announces "
                         "itself as the default router, and may forward the /64s out (turn IPv6 forwarding "
                         "on and route the prefixes to it). Any number of hosts may be routers.")

    # Limits per user: each bounds what one user can make etcd hold (and every listing read), so that
    # no user can fill etcd for the others. Those of VMs and images, and the resources below, are the
    # defaults of the quotas (`ucloud_common.quota`), which an admin sets per user.
    max_vms_per_user: int = Field(100, ge=0, description="Quota default: VMs a user may have (a VM record is at "
                                  "most ≈45 KiB: 10 SSH keys of 4 KiB).")
    max_cpu_per_user: int = Field(200, ge=0, description="Quota default: virtual CPUs a user's VMs may have in "
                                  "all (two for each of max_vms_per_user VMs).")
    max_ram_per_user: float = Field(400, ge=0, description="Quota default: GiB of RAM a user's VMs may have in "
                                    "all (4 GiB for each of max_vms_per_user VMs).")
    max_ssd_per_user: int = Field(4096, ge=0, description="Quota default: GiB of SSD disk a user's VMs may have "
                                  "in all (four times image_quota: a VM's disk is a clone of an image, grown).")
    max_hdd_per_user: int = Field(4096, ge=0, description="Quota default: GiB of HDD disk a user's VMs may have "
                                  "in all.")
    max_networks_per_user: int = Field(20, ge=0, description="Networks a user may have.")
    max_images_per_user: int = Field(50, ge=0, description="Quota default: images a user may have (each also costs its "
                                     "size in the image store).")
    max_ssh_keys_per_user: int = Field(32, ge=0, le=200, description="SSH keys a user may keep (4 KiB each "
                                       "at most; 200 keep a user's record under 1 MiB, below etcd's 1.5 MiB "
                                       "request limit).")
    max_idempotency_keys_per_user: int = Field(100, ge=0, description="Replies to requests with an "
                                               "Idempotency-Key kept per user (a day each, ≤ 48 KiB each: a reply "
                                               "holds the object answered); past it, a request with a new key is "
                                               "refused (429) until older replies expire.")
    max_tokens_per_user: int = Field(20, ge=1, le=1000, description="API tokens a user may hold at once (logins "
                                     "included); past it, a new one is refused until the user revokes some or "
                                     "they expire.")
    login_failures: int = Field(5, ge=1, description="Wrong passwords for one user, or from one source address, "
                                "within `login_window` seconds after which logins are refused (429) until the "
                                "window ends.")
    login_window: int = Field(300, ge=1, le=86400, description="Seconds over which failed logins are counted.")
    login_token_hours: float = Field(12.0, gt=0, le=24 * 365, description="Hours a token from `POST /api/v1/login` "
                                     "works.")
    public_url: str = Field("", pattern=r"^(https?://[^\s/?#]+)?$", description="The API's URL as users reach "
                            "it, e.g. https://cloud.example (behind a reverse proxy, whose Host header the API "
                            "cannot trust): console tickets link their page from it. Empty: the URL the request "
                            "came to.")
    api_read_timeout: float = Field(10.0, gt=0, description="Seconds a client has to send a whole request "
                                    "(request line, headers and body) to the API; a slower one is cut off, so "
                                    "that slow clients never hold the API's threads for long.")

    upload_dir: Path = Field(Path("/var/www"), description="Where users upload files: one folder per user, "
                             "named as the user.")
    upload_max_size: float = Field(256.0, gt=0, description="GiB: the largest file a user may upload through "
                                   "the API (PUT /api/v1/files/{name}); a larger one is refused (413) before or as "
                                   "its bytes arrive, and nothing of it is kept.")
    filescan_settle: float = Field(2.0, ge=0, description="Seconds file-scan waits between its two looks at "
                                   "the tree: a file whose size or mtime changed meanwhile is still being "
                                   "written and is left for the next run.")
    lock_dir: Path = Field(Path("/run/lock"), description="Where the periodic jobs keep their lock files "
                           "(one run at a time).")
    image_max_size: int = Field(256, ge=1, description="GiB: an image whose virtual size is larger is refused.")
    image_quota: int = Field(1024, ge=0, description="Quota default: GiB per user: the virtual sizes of a user's "
                             "images in the image stores add up to at most this; image-scanner refuses an image that "
                             "would pass it. Four images of the largest size: a user cannot fill a store others "
                             "share.")
    upload_quota: int = Field(1024, ge=0, description="Quota default: GiB of files per user in the upload folder, "
                              "as file-scan registers them; a file past it is registered refused (it can become no "
                              "image) and the user must delete some. As much as image_quota: every image was an "
                              "upload once.")
    image_max_expansion: float = Field(10.0, ge=1, description="A qcow2 upload may hold at most this many times "
                                       "its file's size as data (compressed clusters expand; the tiny test image "
                                       "compressed holds 1.2 times its size, zlib at its best over 1000 times).")
    filescan_max_depth: int = Field(32, ge=1, le=1000, description="Folders deep file-scan walks into a user's "
                                    "folder; deeper ones are skipped with a log line.")
    filescan_max_entries: int = Field(10000, ge=1, description="Entries (files and folders) file-scan looks at "
                                      "in one user's folder per run; the rest are skipped with a log line.")
    filescan_user_share: int = Field(16, ge=1, description="GiB of one user's files file-scan reads (hashes) per "
                                     "run; a file that crosses it is still read, the rest wait for the next run, "
                                     "so that one user's uploads never hold up the others' for long.")
    qemu_img_memory: int = Field(1024, ge=64, description="MiB of address space qemu-img may use while it "
                                 "inspects or converts an untrusted file.")
    qemu_img_cpu: int = Field(1800, ge=1, description="CPU seconds qemu-img may use on one image.")

    ceph_conf: Path | None = Field(None, description="ceph.conf of the Ceph cluster; setting it turns the "
                                   "rbd storage backend, RBD fencing and RBD image stores on.")
    ceph_client: str = Field("admin", description="The Ceph client (user) name ucloud connects as.")
    ceph_image_pool: str = Field("images", description="The pool holding images (an image store of that name).")
    ceph_vm_pool: str = Field("vms", description="The pool holding VM disks (clones of images).")
    ceph_hdd_pool: str = Field("", description="The pool holding VMs' HDD disks (empty images), e.g. one on HDD "
                               "OSDs. Empty: rbd VMs get no HDD disk.")

    # Images between hosts (ucloud_vm/imageserver.py, ucloud_vm/imagefetch.py): a host whose local
    # store lacks a VM's image fetches it from a host that has it.
    image_secret: str = Field("", repr=False, pattern="^(.{32,})?$", description="A secret shared by every "
                              "host (32 characters or more): a host's agent serves its local images only to "
                              "requests signed with it, and signs its own. Empty: this host neither serves nor "
                              "fetches images (a local-disk VM is then placed only where its image is).")
    image_port: int = Field(9473, ge=0, le=65535, description="The port of the agent's image server, on the "
                            "host's address (0: any free port, for simulated hosts sharing one machine).")
    image_fetch_timeout: float = Field(30.0, gt=0, description="Seconds a fetch waits for a peer's next "
                                       "bytes before it resumes (from where it stopped) or gives up on that peer.")

    # Prometheus metrics (ucloud_common/metrics.py). The API serves them at its own /metrics; the
    # scheduler and the agent, which serve no HTTP otherwise, on a port each (several agents may run
    # on one machine as simulated hosts, so no daemon takes a port unless told to).
    metrics_address: str = Field("127.0.0.1", description="The address the scheduler's and the agent's "
                                 "/metrics listen on (:: or 0.0.0.0 for a Prometheus on another machine).")
    scheduler_metrics_port: int = Field(0, ge=0, le=65535, description="The scheduler's /metrics port (0: none; "
                                        "9471 is the one the README suggests).")
    agent_metrics_port: int = Field(0, ge=0, le=65535, description="The host agent's /metrics port (0: none; "
                                    "9472 is the one the README suggests).")
    vm_stats_interval: float = Field(15.0, ge=0, description="Seconds between a host agent's samples of its "
                                     "VMs' CPU, memory, disk and network figures, exported on its /metrics and "
                                     "published to etcd for GET /api/v1/vms/{uuid}/stats (0: none). Each sample "
                                     "is one etcd write per running VM.")
    metrics_textfile_dir: Path | None = Field(None, description="Where file-scan and image-scanner write their "
                                              "figures after each run, in the node exporter's textfile format "
                                              "(its --collector.textfile.directory); unset: nowhere.")

    log_level: str = Field("INFO", pattern="^(?i)(DEBUG|INFO|WARNING|ERROR)$")
    log_format: Literal["text", "json"] = Field("text", description="text: one `time level logger: message` "
                                                "line per entry; json: one JSON object per line, with the "
                                                "request id and (API access lines) user, method, path, status "
                                                "and duration as fields, for a log collector.")
    user_write_rate: str = Field("10/second;1000/hour", description="How fast one user (not an admin) may "
                                 "write through one API worker, as `N/second;M/hour` (any of second, minute, "
                                 "hour, day; empty: no limit); past it a write is refused with 429 and "
                                 "Retry-After. Each write adds an event kept for `event_retention`: this bounds "
                                 "what one user can make etcd hold (1000/hour for 7 days: 168,000 events, "
                                 "≈50 MiB, per worker).")

    @field_validator("user_write_rate")
    @classmethod
    def _rates(cls, value: str) -> str:
        if value.strip():
            parse_many(value)  # a ValueError naming the text it cannot read
        return value

    event_retention: float = Field(7 * 24 * 3600.0, ge=1, description="Seconds an event (who asked for "
                                   "what, what the scheduler and agents did) is kept after it was written, "
                                   "also after its object is deleted; up to 1/24 of it (an hour at most) "
                                   "longer, as events share one etcd lease per bucket of time.")

    @field_validator("etcd_endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value: object) -> object:
        if isinstance(value, str):
            endpoints = [EtcdEndpoint.parse(part) for part in value.split(",") if part.strip()]
            if not endpoints:
                raise ValueError("at least one etcd endpoint is needed")
            return endpoints
        return value

    @field_validator("image_stores", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check_invariants(self) -> Self:
        # Three heartbeats fit in one TTL, so one delayed keep-alive (a loaded host, a slow etcd
        # call of up to etcd_timeout) never lets a live host's lease expire.
        if 3 * self.heartbeat_interval > self.host_lease_ttl:
            raise ValueError(
                f"UCLOUD_HEARTBEAT_INTERVAL={self.heartbeat_interval} is too long for "
                f"UCLOUD_HOST_LEASE_TTL={self.host_lease_ttl}: three heartbeats must fit in one TTL"
            )
        if self.heartbeat_interval + self.etcd_timeout > self.host_lease_ttl:
            raise ValueError(
                "UCLOUD_HEARTBEAT_INTERVAL + UCLOUD_ETCD_TIMEOUT must stay below UCLOUD_HOST_LEASE_TTL, "
                "or one slow keep-alive expires a live host"
            )
        if self.etcd_timeout >= self.leader_lease_ttl:
            raise ValueError(
                "UCLOUD_ETCD_TIMEOUT must be below UCLOUD_LEADER_LEASE_TTL, or a leader can lose its "
                "lease while one call is still waiting"
            )
        for store in self.image_stores:
            if store != "local" and (store != self.ceph_image_pool or not self.ceph_conf):
                raise ValueError(f"image store {store} is neither local nor the Ceph image pool "
                                 "(UCLOUD_CEPH_IMAGE_POOL, with UCLOUD_CEPH_CONF)")
        if self.guacamole_vnc_address and 5900 <= self.console_port < 5900 + self.guacamole_vnc_ports:
            raise ValueError(f"UCLOUD_GUACAMOLE_VNC_PORTS={self.guacamole_vnc_ports} (5900 to "
                             f"{5900 + self.guacamole_vnc_ports - 1}) holds UCLOUD_CONSOLE_PORT={self.console_port}: "
                             "a VM's QEMU could take the console proxy's port")
        if bool(self.etcd_cert_cert) != bool(self.etcd_cert_key):
            raise ValueError("UCLOUD_ETCD_CERT_CERT and UCLOUD_ETCD_CERT_KEY go together")
        if bool(self.etcd_user) != bool(self.etcd_password):
            raise ValueError("UCLOUD_ETCD_USER and UCLOUD_ETCD_PASSWORD go together")
        return self


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Read the settings: explicit overrides, then the environment, then the config file.

    A missing default file is fine (everything has a default); a missing file that was asked for
    explicitly (argument or `UCLOUD_CONFIG`) is an error, because the operator expected it to count.
    """
    explicit = config_file or (Path(os.environ["UCLOUD_CONFIG"]) if os.environ.get("UCLOUD_CONFIG") else None)
    path = explicit or DEFAULT_CONFIG_FILE
    if explicit is not None and not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    env_file = path if path.is_file() else None
    return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
