"""`ucloud`: manage VMs, networks, images, files and SSH keys (and, as an admin, hosts and users).

Every command talks to the REST API only. Errors are one line on stderr with a non-zero exit code:
1 the API refused (its reason is shown), 2 bad usage or not logged in, 3 the API cannot be reached.
"""

from __future__ import annotations

import functools
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.shell_completion import get_completion_class

from ucloud_cli.client import CLIError, Client, config_path, save_login
from ucloud_cli.output import Column, error, field, show

VM_COLUMNS: list[Column] = [
    ("UUID", field("uuid")), ("NAME", field("name")), ("STATUS", field("status")),
    ("REQUESTED", field("requested")), ("CPU", lambda v: v["specs"]["cpu"]), ("RAM", lambda v: v["specs"]["ram"]),
    ("SSD", lambda v: v["specs"]["ssd"]), ("HDD", lambda v: v["specs"]["hdd"]),
    ("HOST", lambda v: v["hostname"].rsplit("/", 1)[-1]),
    ("ERROR", field("error")),
]
NETWORK_COLUMNS: list[Column] = [("UUID", field("uuid")), ("NAME", field("name")), ("TYPE", field("type")),
                                 ("VXLAN", field("vxlan_id")), ("IPV6", field("ipv6_prefix")),
                                 ("ATTACHED", field("attached"))]
IMAGE_COLUMNS: list[Column] = [("UUID", field("uuid")), ("NAME", field("name")), ("STORE", field("store_name")),
                               ("STATUS", field("status")), ("PUBLIC", field("public")), ("OWNER", field("owner")),
                               ("ERROR", field("error"))]
FILE_COLUMNS: list[Column] = [("UUID", field("uuid")), ("FILENAME", field("filename")), ("SIZE", field("size")),
                              ("OWNER", field("owner"))]
KEY_COLUMNS: list[Column] = [("NAME", field("name")), ("KEY", lambda k: k["key"][:60] + ("…" if len(k["key"]) > 60 else ""))]
HOST_COLUMNS: list[Column] = [
    ("NAME", field("name")), ("STATUS", field("status")), ("ALIVE", field("alive")),
    ("MAINTENANCE", lambda h: "drain" if h.get("drain") else h["maintenance"]), ("VMS", field("vms")),
    ("CPU", lambda h: f"{_n(h['allocated']['cpu'])}/{_n(h['capacity']['cpu'])}"),
    ("RAM", lambda h: f"{_n(h['allocated']['ram'])}/{_n(h['capacity']['ram'])}"),
    ("SSD", lambda h: f"{_n(h['allocated']['ssd'])}/{_n(h['capacity']['ssd'])}"),
    ("HDD", lambda h: f"{_n(h['allocated']['hdd'])}/{_n(h['capacity']['hdd'])}"),
]
TOKEN_COLUMNS: list[Column] = [("ID", field("id")), ("NAME", field("name")), ("CREATED", field("created_at")),
                               ("EXPIRES", field("expires_at"))]
USER_COLUMNS: list[Column] = [("NAME", field("name")), ("ROLE", field("role")), ("CREATED", field("created_at"))]
EVENT_COLUMNS: list[Column] = [("TIME", field("created_at")), ("SOURCE", field("source")), ("USER", field("user")),
                               ("MESSAGE", field("message"))]
OBJECT_EVENT_COLUMNS: list[Column] = [("TIME", field("created_at")), ("OBJECT", field("object")),
                                      ("SOURCE", field("source")), ("USER", field("user")),
                                      ("REQUEST", field("request_id")), ("MESSAGE", field("message"))]

# What each action waits for with --wait.
TARGETS = {"start": "RUNNING", "resume": "RUNNING", "reboot": "RUNNING", "migrate": "RUNNING (on another host)",
           "shutdown": "STOPPED", "suspend": "SUSPENDED"}


def _n(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CLIError as exc:
            error(str(exc))
            sys.exit(exc.code)

    return wrapper


def output_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table",
                        show_default=True, help="table for people, json (the API's own) for scripts.")(command)


def client() -> Client:
    return Client.from_environment()


def password_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--password-stdin", "from_stdin", is_flag=True, help="Read the password from the first "
                        "line of stdin (for scripts) instead of asking for it.")(command)


def read_password(from_stdin: bool, prompt: str, confirm: bool = True, default: str | None = None) -> str:
    """A password from stdin's next line, or asked for without echo (a new one twice, to catch a typo)."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    password: str = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, default=default,
                                 show_default=False, err=True)
    return password


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__)
def cli() -> None:
    pass


def _names(collection: str, field: str = "name") -> Callable[[click.Context, click.Parameter, str], list[str]]:
    """Tab completion of the names in `collection` the caller sees (nothing when the API cannot be
    reached: a completion never prints an error into the command line being typed)."""
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
        try:
            items = client().request("GET", f"/{collection}")
        except CLIError:
            return []
        return sorted({item[field] for item in items if str(item[field]).startswith(incomplete)})
    return complete


vm_argument = click.argument("vm_ref", metavar="VM", shell_complete=_names("vms"))
network_argument = click.argument("network_ref", metavar="NETWORK", shell_complete=_names("networks"))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the tab completion script for your shell (commands, options, and the names of your VMs,
    networks and images).

    Example: echo 'eval "$(ucloud completion bash)"' >> ~/.bashrc
    """
    complete = get_completion_class(shell)
    assert complete is not None  # one of click's own three
    click.echo(complete(cli, {}, "ucloud", "_UCLOUD_COMPLETE").source())


@cli.command()
@click.option("--url", required=True, help="The API's base URL, e.g. http://api.example:8080")
@click.option("--token", default=None, help="Your API token (asked for if neither it nor --user is given).")
@click.option("--user", default=None, help="Log in with this user's password instead: the API answers a token "
              "that works for UCLOUD_LOGIN_TOKEN_HOURS (12 by default).")
@password_option
@handle_errors
def login(url: str, token: str | None, user: str | None, from_stdin: bool) -> None:
    """Check the URL and token against the API and save them (mode 0600) for the other commands.

    Example: ucloud login --url http://127.0.0.1:8080 --user alice
    """
    if user is not None:
        password = read_password(from_stdin, "Password", confirm=False)
        token = Client(url.rstrip("/"), "").request("POST", "/login", {"name": user, "password": password})["token"]
    elif token is None:
        token = click.prompt("Token", hide_input=True)
    Client(url.rstrip("/"), token).request("GET", "/vms")
    path = save_login(url, token)
    click.echo(f"logged in to {url}; saved in {path}")


# -- VMs ------------------------------------------------------------------------------------------


@cli.group()
def vm() -> None:
    """VMs: create, list, show, act on, delete."""


@vm.command("create")
@click.argument("name")
@click.option("--cpu", type=int, default=1, show_default=True)
@click.option("--ram", type=float, default=1, show_default=True, help="GiB")
@click.option("--ssd", type=int, default=10, show_default=True, help="GiB")
@click.option("--hdd", type=int, default=0, show_default=True, help="GiB")
@click.option("--image", required=True, shell_complete=_names("images"), help="The image, by name or uuid (yours or a public one).")
@click.option("--storage", type=click.Choice(["local", "rbd"]), default="local", show_default=True)
@click.option("--ssh-key", "ssh_keys", multiple=True, help="Name of one of your SSH keys (repeatable).")
@click.option("--network", "networks", multiple=True, help="One of your networks, by name or uuid (repeatable).")
@click.option("--anti-affinity", default=None, help="VMs of one group run on different hosts.")
@click.option("--wait", is_flag=True, help="Follow the VM until it is RUNNING.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds --wait waits.")
@output_option
@handle_errors
def vm_create(name: str, cpu: int, ram: float, ssd: int, hdd: int, image: str, storage: str,
              ssh_keys: tuple[str, ...], networks: tuple[str, ...], anti_affinity: str | None, wait: bool,
              timeout: float, fmt: str) -> None:
    """Create a VM.

    Example: ucloud vm create web1 --cpu 2 --ram 4 --ssd 20 --image tiny --wait
    """
    api = client()
    body: dict[str, Any] = {"name": name, "specs": {"cpu": cpu, "ram": ram, "ssd": ssd, "hdd": hdd},
                            "image": api.find("images", image, "image")["uuid"], "storage": storage, "ssh_keys": list(ssh_keys),
                            "networks": [api.find("networks", ref, "network")["uuid"] for ref in networks]}
    if anti_affinity:
        body["anti_affinity"] = anti_affinity
    created = api.request("POST", "/vms", body)
    if wait:
        created = follow(api, created, "RUNNING", timeout)
    show(created, fmt)


@vm.command("list")
@click.option("--owner", default=None, help="Only this owner's VMs (admin).")
@click.option("--host", default=None, help="Only VMs on this host (admin).")
@click.option("--status", default=None, help="Only VMs in this status, e.g. RUNNING.")
@output_option
@handle_errors
def vm_list(owner: str | None, host: str | None, status: str | None, fmt: str) -> None:
    """List your VMs (an admin: all of them).

    Example: ucloud vm list --status RUNNING
    """
    query = "&".join(f"{k}={v}" for k, v in (("owner", owner), ("host", host), ("status", status)) if v)
    show(client().list(f"/vms{'?' + query if query else ''}"), fmt, VM_COLUMNS)


@vm.command("show")
@vm_argument
@output_option
@handle_errors
def vm_show(vm_ref: str, fmt: str) -> None:
    """Show a VM (by name or uuid): its spec, what was requested, what is, its host, error and each
    NIC's network, MAC and IPv6 address.

    Example: ucloud vm show web1
    """
    show(client().find("vms", vm_ref, "VM"), fmt)


@vm.command("events")
@vm_argument
@output_option
@handle_errors
def vm_events(vm_ref: str, fmt: str) -> None:
    """Who asked what of a VM (by name or uuid), what the scheduler and the agent did, and when.

    Example: ucloud vm events web1
    """
    api = client()
    show(api.request("GET", f"/vms/{api.find('vms', vm_ref, 'VM')['uuid']}/events"), fmt, EVENT_COLUMNS)


@cli.command("events")
@click.option("--object", "obj", default=None, help="Only this object's: vm:<uuid>, network:<uuid>, image:<uuid>, "
              "user:<name> or host:<name> (also a deleted one's).")
@click.option("--since", default=None, help="Only after this time (ISO 8601 with offset, e.g. 2025-01-31T12:00:00Z).")
@click.option("--limit", type=click.IntRange(1, 5000), default=500, show_default=True, help="At most this many.")
@output_option
@handle_errors
def events(obj: str | None, since: str | None, limit: int, fmt: str) -> None:
    """Events of every object, oldest first: who asked what (with the request id), what the scheduler and
    the agents did (admin). Events are kept for UCLOUD_EVENT_RETENTION, also after their object is gone.

    Example: ucloud events --object user:alice --since 2025-01-31T00:00:00Z
    """
    query = urllib.parse.urlencode({k: v for k, v in (("object", obj), ("since", since), ("limit", limit)) if v is not None})
    show(client().request("GET", f"/events?{query}"), fmt, OBJECT_EVENT_COLUMNS)


@vm.command("guacamole")
@vm_argument
@output_option
@handle_errors
def vm_guacamole(vm_ref: str, fmt: str) -> None:
    """What a Guacamole deployment needs to show a VM's screen (by name or uuid): its VNC server's
    address, port and password, and, where the operator set a guacamole-auth-json key, the query
    that logs into Guacamole (append it to Guacamole's URL after '?'). -o json prints the whole
    answer, whose "definition" is guacamole-auth-json's JSON.

    Example: ucloud vm guacamole web1
    """
    api = client()
    answer = api.request("GET", f"/vms/{api.find('vms', vm_ref, 'VM')['uuid']}/guacamole")
    if fmt == "json":
        show(answer, fmt)
        return
    [(name, connection)] = answer["definition"]["connections"].items()
    show({"connection": name, **connection["parameters"], "expires_in": answer["expires_in"],
          "query": answer["query"] or "(no UCLOUD_GUACAMOLE_SECRET_KEY on the API: see -o json's definition)"}, fmt)


def _action(action: str) -> click.Command:
    help_text = {
        "start": "Start a stopped VM.", "shutdown": "Shut a VM down (ACPI, then a hard stop).",
        "reboot": "Reboot a running VM.", "suspend": "Suspend (pause) a running VM.",
        "resume": "Resume a suspended VM.", "migrate": "Move a running VM to another host (admin).",
    }[action]

    @vm_argument
    @click.option("--wait", is_flag=True, help="Follow the VM until its migration has ended (moved, or not, and "
                  "why)." if action == "migrate" else f"Follow the VM until it is {TARGETS[action]}.")
    @click.option("--timeout", type=float, default=300, show_default=True, help="Seconds --wait waits.")
    @output_option
    @handle_errors
    def command(vm_ref: str, wait: bool, timeout: float, fmt: str, **options: Any) -> None:
        api = client()
        body = {"host": options["host"]} if options.get("host") else None
        accepted = api.request("POST", f"/vms/{api.find('vms', vm_ref, 'VM')['uuid']}/{action}", body)
        if wait:
            accepted = (follow_migration(api, accepted, timeout) if action == "migrate"
                        else follow(api, accepted, TARGETS[action], timeout))
        show(accepted, fmt)

    command.__doc__ = f"{help_text} The VM by name or uuid.\n\nExample: ucloud vm {action} web1 --wait"
    if action == "migrate":
        command = click.option("--host", default=None, help="Target host [default: the scheduler chooses].")(command)
    return vm.command(action)(command)


for _name in TARGETS:
    _action(_name)


@vm.command("resize")
@vm_argument
@click.option("--cpu", type=int, default=None, help="Virtual CPUs [default: as now].")
@click.option("--ram", type=float, default=None, help="GiB [default: as now].")
@click.option("--ssd", type=int, default=None, help="GiB, at least as now: disks only grow [default: as now].")
@click.option("--hdd", type=int, default=None, help="GiB, at least as now: disks only grow [default: as now].")
@click.option("--wait", is_flag=True, help="Follow the VM until the scheduler has written the new specs (or "
              "refused them, and why).")
@click.option("--timeout", type=float, default=60, show_default=True, help="Seconds --wait waits.")
@output_option
@handle_errors
def vm_resize(vm_ref: str, cpu: int | None, ram: float | None, ssd: int | None, hdd: int | None, wait: bool,
              timeout: float, fmt: str) -> None:
    """Give a STOPPED VM (by name or uuid) new specs: the scheduler checks that its host has room for
    them; its disks grow at its next start.

    Example: ucloud vm resize web1 --cpu 4 --ram 8 --hdd 100 --wait
    """
    body = {k: v for k, v in (("cpu", cpu), ("ram", ram), ("ssd", ssd), ("hdd", hdd)) if v is not None}
    if not body:
        raise CLIError("name at least one of --cpu, --ram, --ssd, --hdd", code=2)
    api = client()
    accepted = api.request("POST", f"/vms/{api.find('vms', vm_ref, 'VM')['uuid']}/resize", body)
    if wait:
        accepted = follow_resize(api, accepted, timeout)
    show(accepted, fmt)


def follow_resize(api: Client, vm: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Wait until the scheduler has decided the resize this answer asked for: the VM with its new specs;
    CLIError with the reason if refused, or after `timeout`."""
    asked = vm["resize"]
    deadline = time.monotonic() + timeout
    while True:
        vm = api.request("GET", f"/vms/{vm['uuid']}")
        if vm["resize"] is None:
            if vm["specs"] == asked:
                click.echo(f"{vm['name']}: resized; its disks grow at its next start", err=True)
                return vm
            raise CLIError(f"VM {vm['name']} was not resized: {vm['error'] or 'see its events'}")
        if time.monotonic() > deadline:
            raise CLIError(f"VM {vm['name']}'s resize is still waiting for the scheduler after {timeout:g} s")
        time.sleep(0.5)


@vm.command("delete")
@vm_argument
@click.option("--wait", is_flag=True, help="Follow the VM until it is gone.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds --wait waits.")
@handle_errors
def vm_delete(vm_ref: str, wait: bool, timeout: float) -> None:
    """Delete a VM, by name or uuid (its disk goes with it).

    Example: ucloud vm delete web1 --wait
    """
    api = client()
    uuid = api.find("vms", vm_ref, "VM")["uuid"]
    accepted = api.request("DELETE", f"/vms/{uuid}")
    if wait and accepted is not None:
        follow(api, accepted, None, timeout)
    click.echo(f"VM {uuid} {'deleted' if wait or accepted is None else 'is being deleted'}")


def follow(api: Client, vm: dict[str, Any], target: str | None, timeout: float) -> dict[str, Any]:
    """Print each status the VM goes through (on stderr) until it is `target` having acted on this
    request (or gone, for target None); CLIError on ERROR or after `timeout`."""
    generation = vm.get("generation", 0)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            vm = api.request("GET", f"/vms/{vm['uuid']}")
        except CLIError as exc:
            if target is None and "does not exist" in str(exc):
                click.echo(f"{vm['name']}: deleted", err=True)
                return vm
            raise
        if vm["status"] != last:
            last = vm["status"]
            click.echo(f"{vm['name']}: {last}", err=True)
        # An ERROR from before this request is not its outcome (a VM in ERROR being deleted); a
        # deletion that fails is tried again by the agent, so it is waited for, and told at the end.
        acted = vm["observed_generation"] >= generation
        if target is not None and vm["status"] == "ERROR" and acted:
            raise CLIError(f"VM {vm['name']} is in ERROR: {vm['error']}")
        if target is not None and vm["status"] == target and acted:
            return vm
        if time.monotonic() > deadline:
            error = f": {vm['error']}" if vm["error"] else ""  # e.g. why the scheduler cannot place it
            raise CLIError(f"VM {vm['name']} is still {vm['status']} after {timeout:g} s (waiting for "
                           f"{target or 'its deletion'}){error}")
        time.sleep(0.5)


def follow_migration(api: Client, vm: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Print each status and host the VM goes through (on stderr) until the migration this answer
    asked for has ended: the VM, moved; CLIError with the reason if it did not move, or after `timeout`."""
    request, source = vm["migrate_generation"], vm["hostname"]
    deadline = time.monotonic() + timeout
    last = None
    while True:
        vm = api.request("GET", f"/vms/{vm['uuid']}")
        where = vm["hostname"].rsplit("/", 1)[-1]
        if (vm["status"], where) != last:
            last = (vm["status"], where)
            click.echo(f"{vm['name']}: {vm['status']} on {where}", err=True)
        if vm["migrated_generation"] >= request and vm["migration"] is None:
            if vm["hostname"] != source:
                return vm
            reasons = [e["message"] for e in vm["events"] if e["message"].startswith("not migrated")]
            raise CLIError(f"VM {vm['name']} was not migrated: {reasons[-1] if reasons else 'see its events'}")
        if time.monotonic() > deadline:
            raise CLIError(f"VM {vm['name']} is still migrating after {timeout:g} s")
        time.sleep(0.5)


@vm.command("cancel-migration")
@vm_argument
@output_option
@handle_errors
def vm_cancel_migration(vm_ref: str, fmt: str) -> None:
    """Cancel a VM's migration, asked or under way (admin): it stays on, or returns to, its host.

    Example: ucloud vm cancel-migration web1
    """
    api = client()
    show(api.request("DELETE", f"/vms/{api.find('vms', vm_ref, 'VM')['uuid']}/migration"), fmt)


# -- networks -------------------------------------------------------------------------------------


@cli.group()
def network() -> None:
    """Networks (VXLAN, IPv6 first): create, list, show, delete, attach, detach."""


@network.command("create")
@click.argument("name")
@click.option("--ipv6-prefix", default=None, help="An IPv6 /64, e.g. 2001:db8:1::/64.")
@output_option
@handle_errors
def network_create(name: str, ipv6_prefix: str | None, fmt: str) -> None:
    """Create a network.

    Example: ucloud network create backend --ipv6-prefix 2001:db8:1::/64
    """
    body: dict[str, Any] = {"name": name}
    if ipv6_prefix:
        body["ipv6_prefix"] = ipv6_prefix
    show(client().request("POST", "/networks", body), fmt)


@network.command("list")
@output_option
@handle_errors
def network_list(fmt: str) -> None:
    """List your networks.

    Example: ucloud network list -o json
    """
    show(client().list("/networks"), fmt, NETWORK_COLUMNS)


@network.command("show")
@network_argument
@output_option
@handle_errors
def network_show(network_ref: str, fmt: str) -> None:
    """Show a network, by name or uuid.

    Example: ucloud network show backend
    """
    show(client().find("networks", network_ref, "network"), fmt)


@network.command("delete")
@network_argument
@handle_errors
def network_delete(network_ref: str) -> None:
    """Delete a network (by name or uuid) no VM is attached to.

    Example: ucloud network delete backend
    """
    api = client()
    uuid = api.find("networks", network_ref, "network")["uuid"]
    api.request("DELETE", f"/networks/{uuid}")
    click.echo(f"network {uuid} deleted")


@network.command("attach")
@network_argument
@vm_argument
@output_option
@handle_errors
def network_attach(network_ref: str, vm_ref: str, fmt: str) -> None:
    """Attach a VM to a network (a new NIC with its own MAC) (each by name or uuid).

    Example: ucloud network attach backend web1
    """
    _network_change(network_ref, vm_ref, "attach", fmt)


@network.command("detach")
@network_argument
@vm_argument
@output_option
@handle_errors
def network_detach(network_ref: str, vm_ref: str, fmt: str) -> None:
    """Detach a VM from a network (each by name or uuid).

    Example: ucloud network detach backend web1
    """
    _network_change(network_ref, vm_ref, "detach", fmt)


def _network_change(network_ref: str, vm_ref: str, verb: str, fmt: str) -> None:
    api = client()
    uuid = api.find("networks", network_ref, "network")["uuid"]
    show(api.request("POST", f"/networks/{uuid}/{verb}", {"vm": api.find("vms", vm_ref, "VM")["uuid"]}), fmt)


# -- images and files -----------------------------------------------------------------------------


@cli.group()
def image() -> None:
    """Images: list, create from one of your files, delete."""


@image.command("list")
@output_option
@handle_errors
def image_list(fmt: str) -> None:
    """List public images and yours.

    Example: ucloud image list
    """
    show(client().list("/images"), fmt, IMAGE_COLUMNS)


@image.command("create")
@click.argument("name")
@click.option("--file", "file_ref", required=True, help="One of your files, by uuid or file name (see `ucloud file list`).")
@click.option("--store", default="local", show_default=True, help="The image store.")
@click.option("--public", is_flag=True, help="Visible to everyone (admin).")
@output_option
@handle_errors
def image_create(name: str, file_ref: str, store: str, public: bool, fmt: str) -> None:
    """Create an image from one of your uploaded files.

    Example: ucloud image create debian12 --file debian-12.qcow2
    """
    api = client()
    file_uuid = api.find("files", file_ref, "file", name="filename")["uuid"]
    show(api.request("POST", "/images", {"name": name, "file": file_uuid, "store": store, "public": public}), fmt)


@image.command("delete")
@click.argument("image_ref", metavar="IMAGE", shell_complete=_names("images"))
@handle_errors
def image_delete(image_ref: str) -> None:
    """Delete one of your images, by name or uuid (no VM may use it).

    Example: ucloud image delete debian12
    """
    api = client()
    found = api.find("images", image_ref, "image")
    api.request("DELETE", f"/images/{found['uuid']}")
    click.echo(f"image {found['name']} ({found['uuid']}) deleted")


@cli.group("file")
def file_group() -> None:
    """Files you uploaded (registered by file-scan)."""


@file_group.command("list")
@output_option
@handle_errors
def file_list(fmt: str) -> None:
    """List your files.

    Example: ucloud file list
    """
    show(client().list("/files"), fmt, FILE_COLUMNS)


@file_group.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="The file's name in your upload folder [default: PATH's own].")
@click.option("--replace", is_flag=True, help="Replace a file you already have of that name.")
@output_option
@handle_errors
def file_upload(path: Path, name: str | None, replace: bool, fmt: str) -> None:
    """Upload a file into your upload folder (a progress bar on stderr when it is a terminal);
    file-scan registers it within a few minutes, then `ucloud image create --file NAME` takes it.

    Example: ucloud file upload debian-12.qcow2
    """
    api = client()
    size = path.stat().st_size
    with path.open("rb") as source:
        if sys.stderr.isatty():
            with click.progressbar(length=size, label=f"uploading {path.name}", file=sys.stderr) as bar:
                stored = api.upload(name or path.name, source, size, replace, bar.update)
        else:
            stored = api.upload(name or path.name, source, size, replace)
    show(stored, fmt)


# -- SSH keys -------------------------------------------------------------------------------------


@cli.group("ssh-key")
def ssh_key() -> None:
    """Your SSH public keys, for new VMs."""


@ssh_key.command("add")
@click.argument("name")
@click.argument("public_key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@handle_errors
def ssh_key_add(name: str, public_key_file: Path) -> None:
    """Add an SSH public key from a file.

    Example: ucloud ssh-key add laptop ~/.ssh/id_ed25519.pub
    """
    key = public_key_file.read_text(errors="replace").strip()
    client().request("POST", "/ssh-keys", {"name": name, "key": key})
    click.echo(f"SSH key {name} added")


@ssh_key.command("list")
@output_option
@handle_errors
def ssh_key_list(fmt: str) -> None:
    """List your SSH keys.

    Example: ucloud ssh-key list
    """
    show(client().request("GET", "/ssh-keys"), fmt, KEY_COLUMNS)


@ssh_key.command("delete")
@click.argument("name")
@handle_errors
def ssh_key_delete(name: str) -> None:
    """Delete an SSH key.

    Example: ucloud ssh-key delete laptop
    """
    client().request("DELETE", f"/ssh-keys/{name}")
    click.echo(f"SSH key {name} deleted")


# -- admin: hosts and users -----------------------------------------------------------------------


@cli.group()
def host() -> None:
    """Hosts (admin): capacity, allocation, liveness, maintenance."""


@host.command("list")
@output_option
@handle_errors
def host_list(fmt: str) -> None:
    """List hosts with allocated/capacity.

    Example: ucloud host list
    """
    show(client().list("/hosts"), fmt, HOST_COLUMNS)


@host.command("maintenance")
@click.argument("name")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--drain", is_flag=True, help="With on: move every VM away (running ones live, stopped ones are "
              "placed elsewhere).")
@click.option("--wait", is_flag=True, help="With --drain: follow the host until it holds no VM; fails listing "
              "the VMs that cannot leave, and why.")
@click.option("--timeout", type=float, default=1800, show_default=True, help="Seconds --wait waits.")
@output_option
@handle_errors
def host_maintenance(name: str, state: str, drain: bool, wait: bool, timeout: float, fmt: str) -> None:
    """Turn a host's maintenance on (no new VMs; --drain: and none left) or off.

    Example: ucloud host maintenance h3 on --drain --wait
    """
    api = client()
    answer = api.request("POST", f"/hosts/{name}/maintenance", {"on": state == "on", "drain": drain})
    if wait and drain:
        answer = _follow_drain(api, name, timeout)
    show(answer, fmt)


def _follow_drain(api: Client, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        host = api.request("GET", f"/hosts/{name}")
        if host["vms"] != last:
            last = host["vms"]
            click.echo(f"host {name}: {last} VMs", err=True)
        if host["vms"] == 0:
            return host  # type: ignore[no-any-return]
        if host["drain_blocked"] and host["vms"] == len(host["drain_blocked"]):
            stuck = "; ".join(f"{uuid}: {why}" for uuid, why in host["drain_blocked"].items())
            raise CLIError(f"host {name} cannot be emptied: {stuck}")
        if time.monotonic() > deadline:
            raise CLIError(f"host {name} still holds {host['vms']} VMs after {timeout:g} s")
        time.sleep(1)


@host.command("delete")
@click.argument("name")
@handle_errors
def host_delete(name: str) -> None:
    """Forget a host that holds no VM and is DOWN or in maintenance (stop its agent for good first, or
    it registers the host again when it starts).

    Example: ucloud host delete h3
    """
    client().request("DELETE", f"/hosts/{name}")
    click.echo(f"host {name} deleted")


@cli.group()
def user() -> None:
    """Users (admin)."""


@user.command("create")
@click.argument("name")
@click.option("--admin", "is_admin", is_flag=True, help="Make an admin.")
@click.option("--password", "with_password", is_flag=True, help="Also set a password (asked for).")
@password_option
@output_option
@handle_errors
def user_create(name: str, is_admin: bool, with_password: bool, from_stdin: bool, fmt: str) -> None:
    """Create a user; prints its token (shown only this once).

    Example: ucloud user create alice --password
    """
    body = {"name": name, "role": "admin" if is_admin else "user"}
    if with_password or from_stdin:
        body["password"] = read_password(from_stdin, f"Password for {name}")
    created = client().request("POST", "/users", body)
    if fmt == "json":
        show(created, fmt)
    else:
        click.echo(f"user {name} created; token (shown only now): {created['token']}")


@user.command("list")
@output_option
@handle_errors
def user_list(fmt: str) -> None:
    """List users.

    Example: ucloud user list
    """
    show(client().request("GET", "/users"), fmt, USER_COLUMNS)


@user.command("delete")
@click.argument("name")
@click.option("--cascade", is_flag=True, help="Also delete everything the user owns: VMs, networks, images, "
              "files (without it, a user who owns anything is not deleted: the error lists what).")
@click.option("--wait", is_flag=True, help="With --cascade: repeat until the user is gone (its VMs are stopped "
              "and deleted by their hosts), showing what is left.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds --wait waits.")
@handle_errors
def user_delete(name: str, cascade: bool, wait: bool, timeout: float) -> None:
    """Delete a user with its tokens, SSH keys and upload folder (--cascade: with all it owns).

    Example: ucloud user delete alice --cascade --wait
    """
    api = client()
    path = f"/users/{urllib.parse.quote(name, safe='')}{'?cascade=true' if cascade else ''}"
    deadline = time.monotonic() + timeout
    while (going := api.request("DELETE", path)) is not None:
        left = ", ".join(f"{what['count']} {kind} ({', '.join(what['some'])})" for kind, what in going["left"].items())
        click.echo(f"user {name} is being deleted; left: {left or 'nothing (finishing)'}", err=True)
        if not wait:
            click.echo(f"user {name} is being deleted (repeat the command, or add --wait, until it is gone)")
            return
        if time.monotonic() > deadline:
            raise CLIError(f"user {name} is not gone within {timeout:g} s; left: {left}")
        time.sleep(1)
    click.echo(f"user {name} deleted")


@user.command("passwd")
@click.argument("name")
@password_option
@handle_errors
def user_passwd(name: str, from_stdin: bool) -> None:
    """Set your own password (you are asked for the current one) or, as an admin, anyone's.

    With --password-stdin: the new password on the first line, the current one on the second.

    Example: ucloud user passwd alice
    """
    password = read_password(from_stdin, "New password")
    current = read_password(from_stdin, "Current password (empty if you have none or are an admin)",
                            confirm=False, default="")
    body = {"password": password, **({"current_password": current} if current else {})}
    client().request("PUT", f"/users/{urllib.parse.quote(name, safe='')}/password", body)
    click.echo(f"password of {name} set")


# -- quotas ----------------------------------------------------------------------------------------

# As the API names them; those whose unit is bytes are set and shown in GiB.
QUOTA_RESOURCES = ("vms", "cpu", "ram", "ssd", "hdd", "images", "image_bytes", "upload_bytes")


def _quota_rows(quota: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def amount(value: float, unit: str) -> str:
        return f"{value / 2**30:.2f}".rstrip("0").rstrip(".") if unit == "bytes" else _n(value)

    return [{"resource": name, "used": f"{amount(r['used'], r['unit'])}/{amount(r['limit'], r['unit'])}",
             "unit": "GiB" if r["unit"] == "bytes" else r["unit"], "what": r["what"],
             "set": "admin" if r["set"] else "default"} for name, r in quota.items()]


QUOTA_COLUMNS: list[Column] = [("RESOURCE", field("resource")), ("USED/LIMIT", field("used")), ("UNIT", field("unit")),
                               ("SET BY", field("set")), ("WHAT", field("what"))]


def _show_quota(quota: dict[str, dict[str, Any]], fmt: str) -> None:
    show(quota if fmt == "json" else _quota_rows(quota), fmt, QUOTA_COLUMNS)


@cli.group(invoke_without_command=True)
@click.option("--user", "whose", default="me", help="Another user's quota (admin).")
@output_option
@click.pass_context
@handle_errors
def quota(ctx: click.Context, whose: str, fmt: str) -> None:
    """Your quota: what you use of each resource, and the most you may (an admin: set, recount).

    Example: ucloud quota
    """
    if ctx.invoked_subcommand is None:
        _show_quota(client().request("GET", f"/users/{urllib.parse.quote(whose, safe='')}/quota"), fmt)


@quota.command("set")
@click.argument("name")
@click.option("--vms", type=click.IntRange(0), help="VMs.")
@click.option("--cpu", type=click.IntRange(0), help="Virtual CPUs of all the VMs.")
@click.option("--ram", type=click.FloatRange(0), help="GiB of RAM of all the VMs.")
@click.option("--ssd", type=click.IntRange(0), help="GiB of SSD disk of all the VMs.")
@click.option("--hdd", type=click.IntRange(0), help="GiB of HDD disk of all the VMs.")
@click.option("--images", type=click.IntRange(0), help="Images.")
@click.option("--image-gib", "image_bytes", type=click.FloatRange(0), help="GiB of images (virtual sizes).")
@click.option("--upload-gib", "upload_bytes", type=click.FloatRange(0), help="GiB of uploaded files.")
@click.option("--default", "defaults", multiple=True, type=click.Choice(QUOTA_RESOURCES),
              help="Return a resource to the settings' default (repeatable).")
@output_option
@handle_errors
def quota_set(name: str, defaults: tuple[str, ...], fmt: str, **given: float | None) -> None:
    """Set a user's quota of the resources named (admin); the others stay as they are.

    Example: ucloud quota set alice --vms 10 --cpu 16 --ram 32 --default hdd
    """
    body: dict[str, float | None] = {k: int(v * 2**30) if k.endswith("_bytes") else v
                                     for k, v in given.items() if v is not None}
    body.update(dict.fromkeys(defaults))
    if not body:
        raise click.UsageError("name at least one resource to set (e.g. --cpu 8) or --default RESOURCE")
    _show_quota(client().request("PUT", f"/users/{urllib.parse.quote(name, safe='')}/quota", body), fmt)


@quota.command("recount")
@click.argument("name")
@output_option
@handle_errors
def quota_recount(name: str, fmt: str) -> None:
    """Recount a user's usage from their VMs, images and files (admin): the repair of a usage that drifted.

    Example: ucloud quota recount alice
    """
    _show_quota(client().request("POST", f"/users/{urllib.parse.quote(name, safe='')}/quota/recount"), fmt)


# -- your API tokens ------------------------------------------------------------------------------


@cli.group()
def token() -> None:
    """Your API tokens: create (shown once), list, revoke."""


@token.command("create")
@click.argument("name")
@click.option("--expires-in", type=click.IntRange(60), default=None, help="Seconds until it stops working "
              "(default: until revoked).")
@output_option
@handle_errors
def token_create(name: str, expires_in: int | None, fmt: str) -> None:
    """Create an API token; prints it (shown only this once).

    Example: ucloud token create laptop --expires-in 2592000
    """
    created = client().request("POST", "/tokens", {"name": name, "expires_in": expires_in})
    if fmt == "json":
        show(created, fmt)
    else:
        click.echo(f"token {created['id']} ({name}) created; token (shown only now): {created['token']}")


@token.command("list")
@click.option("--user", "whose", default=None, help="Another user's tokens (admin).")
@output_option
@handle_errors
def token_list(whose: str | None, fmt: str) -> None:
    """List your API tokens (never their text).

    Example: ucloud token list
    """
    query = f"?user={urllib.parse.quote(whose, safe='')}" if whose else ""
    show(client().request("GET", f"/tokens{query}"), fmt, TOKEN_COLUMNS)


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@handle_errors
def token_revoke(token_id: str) -> None:
    """Revoke one of your API tokens, by the ID `ucloud token list` shows: it stops working.

    Example: ucloud token revoke 3f9c2a1b7d4e5f60
    """
    client().request("DELETE", f"/tokens/{urllib.parse.quote(token_id, safe='')}")
    click.echo(f"token {token_id} revoked")


__all__ = ["cli", "config_path"]
