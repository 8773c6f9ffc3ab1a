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
    sha512: str = Field(pattern=r"^([0-9a-f]{128})?$")  # "" when `refused`: such a file is never read through
    # Its content digest (ucloud_common/contentdigest.py), what image-scanner checks its copy against;
    # "" when `refused`, and for files registered before it was kept (then the sha512 is checked).
    digest: str = Field("", pattern=r"^([0-9a-f]{64})?$")
    mtime: datetime
    refused: str = ""  # why it can never become an image (too large, by its size or its qcow2 header)


FILES: Family[File] = Family("/v1/file/", File, identity="uuid")
