"""The connection definition Apache Guacamole's guacamole-auth-json extension takes, for a VM's TCP
VNC server, and the signed and encrypted form of it that Guacamole accepts as a login (`?data=`).

The format and the sealing are guacamole-auth-json's (its doc/README.md and doc/encrypt-json.sh):
JSON {"username", "expires" (ms since the epoch), "connections": {name: {"protocol", "parameters"}}};
the HMAC-SHA256 of the JSON under the 128-bit `json-secret-key`, then the JSON, encrypted together
with AES-128-CBC under the same key with an all-zero IV (PKCS#7 padding, as `openssl enc`), in base64.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ucloud_common.vm import VNCEndpoint

# How long Guacamole accepts the login data after it was made: long enough to paste it, short
# enough that one found later in a browser's history or a proxy's log is useless. (The VNC password
# inside lasts as long as the VM's QEMU runs.)
LOGIN_VALID_S = 300


def definition(username: str, connection: str, vnc: VNCEndpoint, expires_ms: int) -> dict[str, Any]:
    """The JSON guacamole-auth-json reads: `username` may use one VNC connection named `connection`."""
    return {"username": username, "expires": expires_ms, "connections": {connection: {
        "protocol": "vnc",
        # Guacamole's parameters are strings, the port too.
        "parameters": {"hostname": vnc.address, "port": str(vnc.port), "password": vnc.password},
    }}}


def sealed(document: dict[str, Any], secret_key: str) -> str:
    """`document` signed and encrypted for Guacamole whose json-secret-key is `secret_key` (32 hex
    digits), in base64 (URL-encode it before it goes into a query: base64 has '+' and '=')."""
    key = bytes.fromhex(secret_key)
    plain = json.dumps(document).encode()
    signed = hmac.new(key, plain, hashlib.sha256).digest() + plain
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    # A zero IV is what guacamole-auth-json decrypts with; the signature opening the plaintext (a
    # MAC of the whole JSON, "expires" included) makes two documents differ from the first block on.
    encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    encrypted = encryptor.update(padder.update(signed) + padder.finalize()) + encryptor.finalize()
    return base64.b64encode(encrypted).decode()


def login_query(data: str) -> str:
    """The query that logs into Guacamole with `data` (`https://guacamole.example/?` + this)."""
    return urllib.parse.urlencode({"data": data})
