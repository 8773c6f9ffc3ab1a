"""The signature on a request for an image between hosts (ucloud_vm/imageserver.py serves it,
ucloud_vm/peerimages.py asks for it).

A token names one image and an expiry and is an HMAC-SHA256 of both under the secret every host
shares (UCLOUD_IMAGE_SECRET). The secret itself never crosses the network: the image server speaks
plain HTTP on the hosts' network (TLS would cost a certificate per host and buys nothing the digest
check does not, for integrity), so anyone who can read that traffic sees the images sent anyway, but
a token they copy opens only that image, and only until it expires.
"""

from __future__ import annotations

import hashlib
import hmac

SCHEME = "ucloud-image"
"""The `Authorization` scheme: `Authorization: ucloud-image <token>`."""

LIFETIME = 300
"""Seconds a token is good for: a fetch signs each request afresh (each resume too), so this covers
only the hosts' clocks being apart, which NTP keeps well within it."""


def sign(secret: str, image: str, now: float) -> str:
    expires = int(now) + LIFETIME
    return f"{expires}.{_mac(secret, image, expires)}"


def valid(secret: str, image: str, token: str, now: float) -> bool:
    """Whether `token` was signed with `secret` for `image` and has not expired (nor expires later
    than a token signed now could: a clock far ahead cannot sign one for the distant future)."""
    expires_text, _, mac = token.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if not now <= expires <= now + 2 * LIFETIME:
        return False
    return hmac.compare_digest(mac, _mac(secret, image, expires))


def _mac(secret: str, image: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{image}\n{expires}".encode(), hashlib.sha256).hexdigest()
