"""What one user may keep of the small objects that cost only etcd space (networks, SSH keys, tokens,
kept replies): a count per user of each, from the settings, so that no user can fill etcd, or slow
every listing, for the others. VMs and images, which also cost hosts' and stores' resources, are
bounded by quotas instead (`ucloud_common.quota`: set per user by an admin, enforced in the creation's
transaction); nothing is bounded by both.

A limit is checked before the create that would pass it, not in the same transaction: requests racing
past the check together may overshoot it by at most the API's concurrent requests (its threads), and
none ever makes the records themselves larger (their sizes are bounded by the request schemas).
"""

from __future__ import annotations

from dataclasses import dataclass

from ucloud_api.errors import APIError
from ucloud_api.replies import store


@dataclass(frozen=True)
class Limit:
    what: str  # the objects counted, plural: "VMs"
    setting: str  # the field of `Settings` that holds the number
    status: int = 409

    def most(self) -> int:
        most: int = getattr(store().settings, self.setting)
        return most

    def check(self, have: int) -> None:
        """Refuse one more when the user already has `have` of them."""
        if have >= self.most():
            raise APIError(self.status, "limit_reached", f"you have {have} {self.what}, the most a user may have "
                           f"(UCLOUD_{self.setting.upper()}={self.most()}); delete some first",
                           limit=self.most())


NETWORKS_PER_USER = Limit("networks", "max_networks_per_user")
SSH_KEYS_PER_USER = Limit("SSH keys", "max_ssh_keys_per_user")
TOKENS_PER_USER = Limit("API tokens", "max_tokens_per_user")
# Kept replies expire after a day: waiting is a way out, so this is "too many requests".
IDEMPOTENCY_KEYS_PER_USER = Limit("replies kept for Idempotency-Key retries", "max_idempotency_keys_per_user", 429)
