"""A qcow2's tables, read by hand: every cluster its L1, L2 and refcount tables point at lies inside
the file and is used once, and its data is not much more than its file.

`qemu-img check` misses both (measured with qemu-img 7.2): it trusts refcounts, so a 448 KiB file
whose L2 entries all point at one data cluster, with that cluster's refcount set to match, is
"consistent" and converts to 1 GiB of real data (256 GiB from a 16 MiB file); and it reads what lies
beyond the end of the file as zeros, so a qcow2 cut after its third cluster (its L1 table beyond the
end) "has no errors" and converts to an all-zero disk. A fresh upload has no snapshots and no
deduplication, so each cluster serves one purpose; compressed clusters may share a host cluster
(several are packed into one) but never start at the same byte, and their data only expands as far
as `max_expansion` times the file's size.

The work is bounded by the file: each table is read once, only where it lies inside the file, and
the bookkeeping is one bit per cluster of the file (a 256 GiB file of 64 KiB clusters: 512 KiB).
"""

from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass

from ucloud_common.diskformat import Qcow2Header, Refused

OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55 of an L1 or standard L2 entry
REFCOUNT_OFFSET_MASK = 0xFFFF_FFFF_FFFF_FE00  # bits 9-63 of a refcount table entry
COMPRESSED = 1 << 62
ZERO_FLAG = 1
SECTOR = 512


@dataclass(frozen=True)
class Layout:
    """What the tables say: guest bytes held as data (zero clusters left out), of which compressed."""

    data_bytes: int
    compressed_bytes: int


class _Clusters:
    """Which clusters of the file are taken: for one purpose (a table, a data cluster), or shared by
    compressed data; one bit each."""

    def __init__(self, cluster_bits: int, file_size: int) -> None:
        self.bits = cluster_bits
        self.file_size = file_size
        count = -(-file_size >> cluster_bits)
        self.taken = bytearray((count + 7) // 8)
        self.shared = bytearray((count + 7) // 8)

    def take(self, offset: int, length: int, what: str) -> None:
        """Take the clusters of [offset, offset + length) for `what`, which must be cluster-aligned and
        inside the file, and used by nothing else."""
        if offset & ((1 << self.bits) - 1):
            raise Refused(f"qcow2 is damaged: {what} at offset {offset} is not aligned to a cluster")
        if offset + length > self.file_size:
            raise Refused(f"qcow2 is truncated: {what} at offset {offset} lies beyond the end of the file "
                          f"({self.file_size} bytes)")
        for index in range(offset >> self.bits, (offset + length - 1 >> self.bits) + 1):
            byte, bit = index >> 3, 1 << (index & 7)
            if (self.taken[byte] | self.shared[byte]) & bit:
                raise Refused(f"qcow2 uses the cluster at offset {index << self.bits} twice ({what} is one use): "
                              "clusters shared by snapshots or deduplication are not accepted in an upload")
            self.taken[byte] |= bit

    def share(self, start: int, end: int) -> None:
        """Mark the clusters holding compressed data [start, end) (they may hold other compressed data too)."""
        for index in range(start >> self.bits, (end - 1 >> self.bits) + 1):
            byte, bit = index >> 3, 1 << (index & 7)
            if self.taken[byte] & bit:
                raise Refused(f"qcow2 uses the cluster at offset {index << self.bits} both for compressed data "
                              "and for something else: not accepted in an upload")
            self.shared[byte] |= bit


def check_tables(fd: int, file_size: int, header: Qcow2Header, max_expansion: float) -> Layout:
    """Read the tables of the qcow2 open as `fd` (`file_size` bytes, its header already judged) and
    refuse it (Refused, saying what and where) if a table or a data cluster lies beyond the end of
    the file, a cluster is used twice, it has internal snapshots, or its data is more than
    `max_expansion` times the file's size."""
    if header.snapshots:
        raise Refused(f"qcow2 with internal snapshots ({header.snapshots}) is not accepted: upload the image "
                      "without them (qemu-img convert -O qcow2)")
    cluster = 1 << header.cluster_bits
    clusters = _Clusters(header.cluster_bits, file_size)
    clusters.take(0, cluster, "the header")
    if header.l1_size:
        clusters.take(header.l1_table_offset, header.l1_size * 8, "the L1 table")
    clusters.take(header.refcount_table_offset, max(header.refcount_table_clusters, 1) * cluster,
                  "the refcount table")
    for entry in _entries(fd, header.refcount_table_offset, header.refcount_table_clusters * cluster):
        if entry & REFCOUNT_OFFSET_MASK:
            clusters.take(entry & REFCOUNT_OFFSET_MASK, cluster, "a refcount block")
    data = compressed = 0
    compressed_starts = array("Q")
    offset_bits = 62 - (header.cluster_bits - 8)  # of a compressed cluster descriptor; the rest counts sectors
    stride = 2 if header.extended_l2 else 1  # extended L2 entries: the descriptor, then a subcluster bitmap
    for l1_entry in _entries(fd, header.l1_table_offset, header.l1_size * 8):
        if not l1_entry & OFFSET_MASK:
            continue
        l2_offset = l1_entry & OFFSET_MASK
        clusters.take(l2_offset, cluster, "an L2 table")
        for entry in _entries(fd, l2_offset, cluster)[::stride]:
            if entry & COMPRESSED:
                start = entry & ((1 << offset_bits) - 1)
                sectors = (entry >> offset_bits) & ((1 << (header.cluster_bits - 8)) - 1)
                end = (start & ~(SECTOR - 1)) + (sectors + 1) * SECTOR
                # The last compressed cluster may end inside the file's last sector, never after it.
                if start >= file_size or end > -(-file_size // SECTOR) * SECTOR:
                    raise Refused(f"qcow2 is truncated: compressed data at offset {start} lies beyond the end "
                                  f"of the file ({file_size} bytes)")
                clusters.share(start, end)
                compressed_starts.append(start)
                compressed += cluster
            elif entry & OFFSET_MASK:
                clusters.take(entry & OFFSET_MASK, cluster, "a data cluster")
                if not entry & ZERO_FLAG:  # a preallocated zero cluster reads as zeros: no data
                    data += cluster
    _once_each(compressed_starts)
    total = data + compressed
    if total > max_expansion * file_size:
        raise Refused(f"qcow2 holds {total / 2**30:.1f} GiB of data in a file of {file_size / 2**20:.1f} MiB: "
                      f"more than {max_expansion:g} times its size is not accepted")
    return Layout(total, compressed)


def _once_each(starts: array[int]) -> None:
    """Refuse compressed clusters that start at the same byte. qemu-img writes them in increasing
    order, which proves it at no cost; any other order is sorted."""
    if all(before < after for before, after in zip(starts, starts[1:])):
        return
    ordered = sorted(starts)
    for before, after in zip(ordered, ordered[1:]):
        if before == after:
            raise Refused(f"qcow2 uses the compressed data at offset {after} twice: "
                          "clusters shared by deduplication are not accepted in an upload")


def _entries(fd: int, offset: int, length: int) -> tuple[int, ...]:
    """The big-endian 64-bit entries of the table at [offset, offset + length) (inside the file: taken)."""
    table = os.pread(fd, length, offset)
    return struct.unpack(f">{len(table) // 8}Q", table)
