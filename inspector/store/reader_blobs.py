"""The blob half of RunReader: attention-map index rows and the tensors they point to.

Index rows are checked when their frame is decoded (impossible fields, or bytes past the end of
their blob file: such rows are dropped and reported), and again before a tensor is read, so a
crafted row never makes the reader allocate or read what is not there.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from inspector.schema import ATTENTION_MAP, BLOB_INDEX_FIELDS, kind_id
from inspector.schema.run_meta import printable
from inspector.store.blob_check import BadBlobRowError, check_blob_row
from inspector.store.errors import CorruptRunError
from inspector.store.format import blob_name, segment_name
from inspector.store.scan import FrameRef


@dataclass
class BlobIndex:
    """Decoded index frames of one blob kind of one rank, and (table, row) per step."""

    tables: list[pa.Table] = field(default_factory=list)
    by_step: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    frames_seen: int = 0


class BlobReads:
    """Blob access for RunReader (which provides `_decode`, `_pread`, `_file_size`, `_loss`,
    `_ranks`, `_blob_index` and `path`)."""

    def blob_steps(self, kind: str = ATTENTION_MAP.name, rank: int = 0) -> list[int]:
        """Sorted steps at which `rank` stored blobs of `kind`."""
        return sorted(self._index(kind, rank).by_step)

    def blob_rows(self, kind: str = ATTENTION_MAP.name, *, step: int, rank: int = 0) -> list[dict[str, Any]]:
        """Index rows of the blobs of `kind` stored at `step` by `rank` (no tensor bytes read)."""
        idx = self._index(kind, rank)
        return [idx.tables[t].slice(r, 1).to_pylist()[0] for t, r in idx.by_step.get(step, [])]

    def fetch(self, kind: str = ATTENTION_MAP.name, *, step: int, rank: int = 0,
              **match: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """The tensor of `kind` at `step` whose index row matches `match` (e.g. layer=3), with its row.

        One dictionary lookup, one read and one decompression: no scan of the run.
        """
        idx = self._index(kind, rank)
        for t, r in idx.by_step.get(step, []):
            table = idx.tables[t]
            # Check the match on the columns first: materialising every row of the step as a dict
            # (24 maps per step) cost ~1 ms per fetch, more than reading the blob.
            if any(k in table.column_names and table.column(k)[r].as_py() != v for k, v in match.items()):
                continue
            row = table.slice(r, 1).to_pylist()[0]
            if all(row.get(k) == v for k, v in match.items()):
                return self._read_blob(rank, row), row
        raise KeyError(f"no {kind} at step {step} on rank {rank} matching {match or 'anything'}")

    def attention_map(self, *, step: int, layer: int, rank: int = 0) -> np.ndarray:
        """Attention probabilities [heads, rows, keys] (float16) of `layer` at `step`."""
        return self.fetch(ATTENTION_MAP.name, step=step, rank=rank, layer=layer)[0]

    def _index(self, kind: str, rank: int) -> BlobIndex:
        kid = kind_id(kind)
        idx = self._blob_index.setdefault((rank, kid), BlobIndex())
        refs = self._ranks[rank].by_kind.get(kid, []) if rank in self._ranks else []
        for ref in refs[idx.frames_seen:]:
            table = self._decode(ref)
            if table is None:
                continue
            t = len(idx.tables)
            idx.tables.append(table)
            for r, step in enumerate(table.column("step").to_numpy()):
                idx.by_step.setdefault(int(step), []).append((t, r))
        idx.frames_seen = len(refs)
        return idx

    def _read_blob(self, rank: int, row: dict[str, Any]) -> np.ndarray:
        where = f"{row.get('kind', 'blob')} of step {row.get('step')}"
        try:
            blob = check_blob_row(row)
        except BadBlobRowError as exc:
            raise self._blob_lost(rank, where, f"has an impossible index row ({exc})") from None
        data = self._pread(rank, blob_name(blob.blob_file), blob.offset, blob.length)
        if data is None or len(data) != blob.length or zlib.crc32(data) != blob.crc32:
            raise self._blob_lost(rank, where, f"at {blob_name(blob.blob_file)}+{blob.offset} is damaged "
                                  "(missing or checksum mismatch)")
        if blob.codec != "none":
            try:
                data = pa.Codec(blob.codec).decompress(data, decompressed_size=blob.nbytes, asbytes=True)
            except (pa.ArrowException, ValueError, MemoryError) as exc:
                raise self._blob_lost(rank, where, f"does not decompress ({type(exc).__name__})") from None
            if len(data) != blob.nbytes:
                raise self._blob_lost(rank, where, f"decompresses to {len(data)} bytes, not {blob.nbytes}")
        return np.frombuffer(data, dtype=blob.dtype).reshape(blob.shape)

    def _blob_lost(self, rank: int, where: str, why: str) -> CorruptRunError:
        """Report an unreadable blob among the run's problems; the error to raise for it."""
        message = f"{where} {why}"
        self._loss(rank, f"blob:{rank}:{message}", message)
        return CorruptRunError(f"{printable(str(self.path), 300)}: rank {rank}: {message}")

    def _possible_blob_rows(self, ref: FrameRef, table: pa.Table) -> pa.Table:
        """`table` without the index rows that cannot be right (impossible fields, or bytes past the
        end of their blob file: the bytes are written before their row, so they must be there)."""
        keep, bad = [], []
        rows = table.select([f.name for f in BLOB_INDEX_FIELDS]).to_pylist()
        for i, row in enumerate(rows):
            try:
                blob = check_blob_row(row)
            except BadBlobRowError as exc:
                bad.append(str(exc))
                continue
            size = self._file_size(ref.rank, blob_name(blob.blob_file))
            if size is None or blob.offset + blob.length > size:
                bad.append(f"bytes past the end of {blob_name(blob.blob_file)}")
                continue
            keep.append(i)
        if bad:
            where = f"{segment_name(ref.segment)}+{ref.offset}"
            self._loss(ref.rank, f"blobrow:{ref.rank}:{where}",
                       f"{len(bad)} attention-map index row(s) of the record at {where} skipped ({bad[0]})")
            table = table.take(pa.array(keep, pa.int64()))
        return table
