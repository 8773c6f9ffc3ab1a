"""The file family: `/v1/file/<uuid>`: a file a user uploaded, as file-scan registered it."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from ucloud_common.record import Family, Name, Record


class File(Record):
    uuid: Name
    owner: Name
    filename: str = Field(min_length=1)  # relative to the owner's upload folder
    size: int = Field(ge=0)
    sha512: str = Field(pattern=r"^[0-9a-f]{128}$")
    mtime: datetime


FILES: Family[File] = Family("/v1/file/", File, identity="uuid")
