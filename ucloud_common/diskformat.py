"""Judging an untrusted disk image from its header, before anything opens it as an image.

OSSA-2024-001: a qcow2 whose backing file or external data file names a host file makes qemu-img
read that host file into the image. So the header is parsed here, by hand, and anything that could
make qemu-img open another file is refused, as is any format but raw and qcow2, any qcow2 feature
not known, and any virtual size over the limit. Only then does qemu-img see the file, always with
an explicit format and under CPU and memory limits.

`size_refusal` needs only the first 32 bytes and the file's size: file-scan and image-scanner ask it
before they read a file through (an 8 GiB sparse file took 55 s to hash before it was refused).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ucloud_common.errors import PermanentError
from ucloud_common.quoting import quote

QCOW2_MAGIC = b"QFI\xfb"
# Formats qemu would recognise by their first bytes: refused (they are not raw, whatever the name).
OTHER_MAGICS = {
    b"KDMV": "vmdk", b"# Disk DescriptorFile": "vmdk", b"conectix": "vpc", b"vhdxfile": "vhdx",
    b"<<< Oracle VM VirtualBox Disk Image >>>": "vdi", b"QED\x00": "qed", b"LUKS\xba\xbe": "luks",
    b"cloop": "cloop", b"\x00\x00\x00\x00ParallelsDisk": "parallels", b"WithoutFreeSpace": "parallels",
    b"DMGS": "dmg",
}
KNOWN_INCOMPATIBLE = 0b11001  # dirty, compression type, extended L2 (bit 1 corrupt, bit 2 data file: refused)
INCOMPATIBLE_EXTENDED_L2 = 1 << 4
INCOMPATIBLE_EXTERNAL_DATA = 1 << 2
INCOMPATIBLE_CORRUPT = 1 << 1
AUTOCLEAR_RAW_EXTERNAL_DATA = 1 << 1
EXT_END, EXT_DATA_FILE, EXT_CRYPTO = 0, 0x44415441, 0x0537BE77
HEADER_BYTES = 64 * 1024
# A qcow2 file holds its data (at most its virtual size: `qcow2tables` refuses a cluster used twice)
# and metadata: L2 tables (at most 16 bytes per cluster: 1/32 of the data at 512-byte clusters),
# refcounts (at most 8 bytes per cluster: 1/64), the L1 and refcount tables and the header. An eighth
# of the virtual size and 16 MiB hold all of it; a larger file is padding nobody needs to read.
QCOW2_METADATA_SHARE = 8
QCOW2_METADATA_SLACK = 16 * 2**20


class Refused(PermanentError):
    """The file is not accepted (and never will be: retrying is useless); `str()` says why, for the
    image's `error`."""


@dataclass(frozen=True)
class Qcow2Header:
    """Where a qcow2's tables are, as its header says (`qcow2tables` checks what they point at)."""

    cluster_bits: int
    virtual_size: int
    l1_size: int  # entries
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    snapshots: int
    extended_l2: bool


@dataclass(frozen=True)
class Verdict:
    format: str  # "raw" or "qcow2"
    virtual_size: int
    qcow2: Qcow2Header | None = None


def judge(header: bytes, file_size: int, max_size: int) -> Verdict:
    """Decide from the file's first bytes (at least HEADER_BYTES of them, or all) and its size."""
    qcow2 = None
    if header.startswith(QCOW2_MAGIC):
        qcow2 = _qcow2(header, file_size)
    for magic, name in OTHER_MAGICS.items():
        if header.startswith(magic):
            raise Refused(f"format {name} is not accepted (only raw and qcow2)")
    if why := size_refusal(header, file_size, max_size):
        raise Refused(why)
    if qcow2 is None:
        return Verdict("raw", file_size)
    return Verdict("qcow2", qcow2.virtual_size, qcow2)


def size_refusal(header: bytes, file_size: int, max_size: int) -> str | None:
    """Why a file of this size, starting with `header` (32 bytes suffice), cannot become an image
    of at most `max_size` bytes, or None: a raw image is as large as its file, a qcow2 as its header
    says, and a qcow2 file is never much larger than its virtual size."""
    virtual = file_size
    if header.startswith(QCOW2_MAGIC) and len(header) >= 32:
        virtual = struct.unpack(">Q", header[24:32])[0]
    if virtual > max_size:
        return f"virtual size {virtual / 2**30:.1f} GiB exceeds the limit of {max_size / 2**30:.0f} GiB"
    if file_size > virtual + virtual // QCOW2_METADATA_SHARE + QCOW2_METADATA_SLACK:
        return (f"the file ({file_size / 2**30:.1f} GiB) is larger than any qcow2 of virtual size "
                f"{virtual / 2**30:.1f} GiB needs to be")
    return None


def _qcow2(header: bytes, file_size: int) -> Qcow2Header:
    if len(header) < 72:
        raise Refused("truncated qcow2 header")
    (version, backing_offset, backing_size, cluster_bits, size, crypt_method) = struct.unpack(">IQIIQI", header[4:36])
    if version not in (2, 3):
        raise Refused(f"qcow2 version {version} is not known")
    if backing_offset or backing_size:
        name = header[backing_offset:backing_offset + backing_size].decode(errors="replace") if backing_offset else ""
        raise Refused(f"qcow2 with a backing file ({quote(name) if name else 'beyond the header'}) is not accepted")
    if crypt_method:
        raise Refused("encrypted qcow2 is not accepted")
    if not 9 <= cluster_bits <= 21:
        raise Refused(f"qcow2 cluster size 2^{cluster_bits} is invalid")
    header_length = 72
    incompatible = 0
    if version == 3:
        if len(header) < 104:
            raise Refused("truncated qcow2 header")
        incompatible, _compatible, autoclear, _refcount_order, header_length = struct.unpack(">QQQII", header[72:104])
        if incompatible & INCOMPATIBLE_EXTERNAL_DATA or autoclear & AUTOCLEAR_RAW_EXTERNAL_DATA:
            raise Refused("qcow2 with an external data file is not accepted")
        if incompatible & INCOMPATIBLE_CORRUPT:
            raise Refused("qcow2 marked corrupt")
        if incompatible & ~KNOWN_INCOMPATIBLE:
            raise Refused(f"qcow2 with unknown incompatible features ({incompatible:#x})")
    offset = header_length
    while True:  # header extensions, up to the end marker
        if offset + 8 > len(header):
            raise Refused("qcow2 header extensions run past the header")
        kind, length = struct.unpack(">II", header[offset:offset + 8])
        if kind == EXT_END:
            break
        if kind == EXT_DATA_FILE:
            raise Refused("qcow2 with an external data file is not accepted")
        if kind == EXT_CRYPTO:
            raise Refused("encrypted qcow2 is not accepted")
        offset += 8 + (length + 7) // 8 * 8
    if file_size < 2 * (1 << cluster_bits) and size:
        raise Refused("truncated qcow2: smaller than its own metadata")
    l1_size, l1_offset, refcount_offset, refcount_clusters, snapshots = struct.unpack(">IQQII", header[36:64])
    return Qcow2Header(cluster_bits, size, l1_size, l1_offset, refcount_offset, refcount_clusters, snapshots,
                       bool(incompatible & INCOMPATIBLE_EXTENDED_L2))
