"""The image family: `/v1/image/<uuid>`: a request to turn a file into an image, and its outcome;
and `/v1/image-deletion/<uuid>`: an image of a Ceph image pool deleted through the API, whose RBD
image image-scanner has yet to remove."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from ucloud_common.record import Family, Name, Record


class ImageStatus(StrEnum):
    TO_BE_CREATED = "TO_BE_CREATED"
    CREATED = "CREATED"
    ERROR = "ERROR"


class Image(Record):
    uuid: Name
    owner: Name
    name: Name
    store_name: Name
    file_uuid: str = ""
    public: bool = False
    status: ImageStatus = ImageStatus.TO_BE_CREATED
    error: str = ""
    size: int = Field(0, ge=0)  # virtual size in bytes, once CREATED: what counts against its owner's image quota
    # The content digest (ucloud_common/contentdigest.py) of the local store's raw file, once CREATED
    # there (its length is `size`): what a host fetching the image from another checks before using
    # it. "" in Ceph, and for images made before it was kept.
    digest: str = Field("", pattern="^([0-9a-f]{64})?$")
    # Set by the API's deletion before it looks for VMs based on the image: a VM creation that read
    # the image before compares its revision (`Unchanged`) and fails, so no VM is made from an image
    # whose deletion did not see it. No VM is made from an image being deleted.
    deleting: bool = False


IMAGES: Family[Image] = Family("/v1/image/", Image, identity="uuid")


class ImageDeletion(Record):
    """Written by the API with the image's removal, in one transaction; removed by image-scanner once
    the RBD image and its snapshot are gone. (A local image needs none: each host's agent removes the
    files of images that have no record.) Only what ucloud deleted is removed from a pool, never an
    RBD image merely missing a record."""

    uuid: Name
    store_name: Name


IMAGE_DELETIONS: Family[ImageDeletion] = Family("/v1/image-deletion/", ImageDeletion, identity="uuid")
