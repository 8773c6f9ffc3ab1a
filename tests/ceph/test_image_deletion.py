"""A deleted image's RBD image and snapshot leave the Ceph image pool once no clone depends on them
(image-scanner's run, on the session's one-node Ceph and a real etcd); nothing ucloud did not delete
is touched."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.tiny import tiny_image
from ucloud_common.ceph import Ceph
from ucloud_common.config import Settings
from ucloud_common.image import IMAGE_DELETIONS, ImageDeletion
from ucloud_common.store import Store
from ucloud_imagescanner.scanner import scan


def test_a_deleted_image_leaves_the_pool_once_no_clone_depends_on_it(ceph: Ceph, store: Store, settings: Settings,
                                                                      tmp_path: Path) -> None:
    settings = settings.model_copy(update={"image_dir": tmp_path / "images", "upload_dir": tmp_path / "www",
                                           "ceph_image_pool": "images"})
    for name in ("gone-free", "gone-cloned", "stray"):
        ceph.store_image("images", name, tiny_image() / "tiny.raw")
    ceph.clone_disk("images", "gone-cloned", "vms", "disk-of-gone-cloned", 1)
    try:
        # As the API deletes them (the image's record removed, its deletion recorded, one transaction).
        for name, pool in (("gone-free", "images"), ("gone-cloned", "images"), ("elsewhere", "other-pool")):
            store.create(IMAGE_DELETIONS, name, ImageDeletion(uuid=name, store_name=pool))
        first = scan(store, settings, ceph)
        assert (first.removed, first.removing) == (1, 2)
        assert not ceph.exists("images", "gone-free") and store.get(IMAGE_DELETIONS, "gone-free") is None
        assert ceph.exists("images", "gone-cloned"), "a clone still depends on it: it waits"
        assert ceph.clones("images", "gone-cloned") == ["vms/disk-of-gone-cloned"]
        assert ceph.exists("images", "stray"), "an RBD image ucloud did not delete stays"
        ceph.remove("vms", "disk-of-gone-cloned")  # its VM deleted by its agent
        second = scan(store, settings, ceph)
        assert (second.removed, second.removing) == (1, 1)
        assert not ceph.exists("images", "gone-cloned") and store.get(IMAGE_DELETIONS, "gone-cloned") is None
        assert store.get(IMAGE_DELETIONS, "elsewhere") is not None, "left for an image-scanner serving that pool"
    finally:
        ceph.remove("vms", "disk-of-gone-cloned")
        for name in ("gone-free", "gone-cloned", "stray"):
            ceph.remove_image("images", name)
