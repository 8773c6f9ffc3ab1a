import json
from datetime import datetime

import pytest
from pydantic import ValidationError

from ucloud_common.host import HOSTS, Host
from ucloud_common.record import InvalidRecord, check_name
from ucloud_common.specs import Specs
from ucloud_common.states import Requested, Status
from ucloud_common.vm import VMS, VM


def a_vm(**changes: object) -> VM:
    data = {"uuid": "0b0c5a30-1", "owner": "alice", "name": "web1",
            "specs": {"cpu": 1, "ram": 0.5, "ssd": 4}, "image": "tiny"}
    data.update(changes)
    return VM.model_validate(data)


def test_a_new_vm_wants_to_run_and_has_no_host() -> None:
    vm = a_vm()
    assert vm.requested is Requested.RUNNING
    assert vm.status is Status.REQUESTED_NEW
    assert vm.hostname == ""
    assert (vm.generation, vm.observed_generation) == (1, 0)
    assert vm.specs.hdd == 0


def test_records_round_trip_through_their_family() -> None:
    vm = a_vm()
    assert VMS.decode(VMS.key(vm.uuid), VMS.encode(vm)) == vm
    assert VMS.key("abc") == "/v1/vm/abc"
    assert VMS.name_of(b"/v1/vm/abc") == "abc"
    assert HOSTS.key("h1") == "/v1/host/h1"


def test_evolve_validates_and_moves_updated_at() -> None:
    vm = a_vm()
    later = vm.evolve(status=Status.SCHEDULED_DEPLOY, hostname=HOSTS.key("h1"))
    assert later.status is Status.SCHEDULED_DEPLOY and later.updated_at >= vm.updated_at
    assert later.created_at == vm.created_at
    with pytest.raises(ValidationError):
        vm.evolve(status="NAPPING")
    with pytest.raises(ValidationError):
        vm.evolve(specs={"cpu": 0, "ram": 1, "ssd": 1})


def test_records_are_frozen() -> None:
    with pytest.raises(ValidationError):
        a_vm().status = Status.RUNNING  # type: ignore[misc]


def test_unknown_fields_survive_a_round_trip_so_older_daemons_do_not_drop_them() -> None:
    raw = json.loads(VMS.encode(a_vm()))
    raw["from_the_future"] = {"x": 1}
    vm = VMS.decode("/v1/vm/0b0c5a30-1", json.dumps(raw).encode())
    assert json.loads(VMS.encode(vm.evolve(status=Status.SCHEDULED_DEPLOY)))["from_the_future"] == {"x": 1}


@pytest.mark.parametrize("value, reason", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'{"uuid": "x"}', "does not fit VM"),
    (b'[1, 2]', "does not fit VM"),
])
def test_garbage_is_an_invalid_record_naming_its_key(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason) as error:
        VMS.decode(b"/v1/vm/x", value)
    assert error.value.key == "/v1/vm/x"


def test_a_key_nested_below_a_family_is_invalid() -> None:
    with pytest.raises(InvalidRecord, match="not a valid key"):
        VMS.decode(b"/v1/vm/x/y", VMS.encode(a_vm()))


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "a..b", "x" * 64, "tab\there", "nul\0", "é"])
def test_names_that_could_escape_a_key_or_a_path_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)
    if len(name) < 64:
        with pytest.raises(ValueError):
            VMS.key(name)


def test_good_names() -> None:
    for name in ["web1", "a", "x" * 63, "h1.example.org", "f47ac10b-58cc-4372-a567-0e02b2c3d479"]:
        assert check_name(name) == name


@pytest.mark.parametrize("specs", [
    {"cpu": 0, "ram": 1, "ssd": 1}, {"cpu": 1, "ram": 0, "ssd": 1}, {"cpu": 1, "ram": -1, "ssd": 1},
    {"cpu": 1, "ram": 1, "ssd": -1}, {"cpu": 1, "ram": 1e9, "ssd": 1}, {"cpu": "many", "ram": 1, "ssd": 1},
    {"cpu": 1, "ram": 1, "ssd": 1, "gpu": 1},
])
def test_absurd_specs_are_refused(specs: dict) -> None:
    with pytest.raises(ValidationError):
        Specs.model_validate(specs)


def test_host_defaults() -> None:
    host = Host(name="h1", capacity=Specs(cpu=8, ram=32, ssd=500))
    assert host.status == "UP" and host.storage_backends == ("local",)
    assert isinstance(host.created_at, datetime)
