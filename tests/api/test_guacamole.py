"""`GET /api/v1/vms/<uuid>/guacamole` on a real etcd: guacamole-auth-json's connection definition for
the VM's TCP VNC server (as its agent records it), refusals that say what would work, and the login
data sealed exactly as Guacamole opens it — checked with the `openssl` commands of guacamole-auth-json's
reference implementation (doc/encrypt-json.sh). The agent's side runs for real in
tests/e2e/test_guacamole.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import time
import urllib.parse

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.api.conftest import As, set_status
from ucloud_common.states import Status
from ucloud_common.store import Store
from ucloud_common.vm import VMS, VNCEndpoint

KEY = "4c0b569e4c96df157eee1b65dd0e4d41"  # guacamole-auth-json's own example key
VNC = VNCEndpoint(address="10.0.0.7", port=5901, password="pA5s-w0r")


def running_with_vnc(store: Store, uuid: str) -> None:
    set_status(store, uuid, Status.RUNNING)
    store.update(VMS, uuid, lambda vm: vm.evolve(guacamole=VNC))


def test_the_definition_is_the_owners_and_only_for_a_vm_that_runs(alice: As, bob: As, admin: As,
                                                                   store: Store) -> None:
    vm = alice.create_vm("web1")
    path = f"/api/v1/vms/{vm['uuid']}/guacamole"
    new = alice.get(path)
    assert new.status_code == 409 and new.json["error"]["message"] == "the VM is REQUESTED_NEW: start it first"
    set_status(store, vm["uuid"], Status.RUNNING)
    without = alice.get(path)  # its host runs no TCP VNC for Guacamole
    assert without.status_code == 409, without.json
    assert "its host h1 offers none (UCLOUD_GUACAMOLE_VNC_ADDRESS unset there" in without.json["error"]["message"]

    running_with_vnc(store, vm["uuid"])
    before_ms = time.time() * 1000
    given = alice.get(path)
    assert given.status_code == 200, given.json
    assert given.headers["Cache-Control"] == "no-store"
    definition = given.json["definition"]
    assert definition["username"] == "alice"
    assert definition["connections"] == {"web1": {"protocol": "vnc", "parameters": {
        "hostname": "10.0.0.7", "port": "5901", "password": "pA5s-w0r"}}}
    assert before_ms + 299_000 <= definition["expires"] <= time.time() * 1000 + 300_000
    assert given.json["expires_in"] == 300
    assert given.json["data"] is None and given.json["query"] is None  # the API has no secret key

    # The password is in no other answer about the VM.
    assert "pA5s-w0r" not in alice.get(f"/api/v1/vms/{vm['uuid']}").get_data(as_text=True)
    assert "pA5s-w0r" not in alice.get("/api/v1/vms").get_data(as_text=True)
    assert "pA5s-w0r" not in alice.post(f"/api/v1/vms/{vm['uuid']}/suspend").get_data(as_text=True)

    other = bob.get(path)  # another's VM: as if it did not exist
    assert other.status_code == 404 and other.json["error"]["message"] == f"VM {vm['uuid']} does not exist"
    assert bob.get("/api/v1/vms/no-such-vm/guacamole").status_code == 404
    assert admin.get(path).json["definition"]["username"] == "admin"

    set_status(store, vm["uuid"], Status.STOPPED)
    stopped = alice.get(path)
    assert stopped.status_code == 409 and stopped.json["error"]["message"] == "the VM is STOPPED: start it first"
    assert stopped.json["error"]["vm_status"] == "STOPPED"


def test_the_login_data_is_sealed_as_guacamole_auth_json_opens_it(alice: As, store: Store) -> None:
    store.settings = store.settings.model_copy(update={"guacamole_secret_key": KEY})
    vm = alice.create_vm("web2")
    running_with_vnc(store, vm["uuid"])
    answer = alice.get(f"/api/v1/vms/{vm['uuid']}/guacamole").json
    data = answer["data"]

    # Opened as guacamole-auth-json does: AES-128-CBC, zero IV; a valid HMAC-SHA256 first, then the JSON.
    key = bytes.fromhex(KEY)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    plain = unpadder.update(decryptor.update(base64.b64decode(data)) + decryptor.finalize()) + unpadder.finalize()
    signature, document = plain[:32], plain[32:]
    assert hmac.compare_digest(signature, hmac.new(key, document, hashlib.sha256).digest())
    assert json.loads(document) == answer["definition"]
    # Byte for byte what the reference implementation makes of the same JSON.
    assert _reference_seal(KEY, document) == data
    assert answer["query"] == "data=" + urllib.parse.quote(data, safe="")
    assert urllib.parse.parse_qs(answer["query"])["data"] == [data]  # '+' and '=' survive the URL

    wrong = bytes.fromhex("00" * 16)  # another key opens it to garbage, never to a valid signature
    decryptor = Cipher(algorithms.AES(wrong), modes.CBC(bytes(16))).decryptor()
    garbage = decryptor.update(base64.b64decode(data)) + decryptor.finalize()
    assert not hmac.compare_digest(garbage[:32], hmac.new(wrong, garbage[32:], hashlib.sha256).digest())


def _reference_seal(key: str, document: bytes) -> str:
    """guacamole-auth-json's doc/encrypt-json.sh: sign with `openssl dgst`, encrypt with `openssl enc`."""
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{key}", "-binary"],
                               input=document, capture_output=True, check=True).stdout
    return subprocess.run(["openssl", "enc", "-aes-128-cbc", "-K", key, "-iv", "0" * 32, "-nosalt", "-a", "-A"],
                          input=signature + document, capture_output=True, check=True).stdout.decode().strip()
