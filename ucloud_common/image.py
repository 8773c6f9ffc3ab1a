"""The image family: `/v1/image/<uuid>`: a request to turn a file into an image, and its outcome."""

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


IMAGES: Family[Image] = Family("/v1/image/", Image, identity="uuid")
