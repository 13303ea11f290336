"""Exporting a blob kind (attention maps): one `.npy` file per tensor beside an index table.

The index keeps every column of the kind that means something outside the run (step, rank, layer,
heads, shape, dtype, …) and replaces the run's blob position (blob file, offset, length, codec,
checksum) by `file`: the `.npy` path relative to the export directory. Files are written with
`np.save(..., allow_pickle=False)`; a tensor whose bytes are damaged keeps its row with an empty
`file`, and the reader reports why among its problems.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from inspector.schema import BLOB_INDEX_FIELDS
from inspector.store.errors import CorruptRunError
from inspector.store.reader import RunReader

BLOB_COLUMNS = [f.name for f in BLOB_INDEX_FIELDS]
POSITION_COLUMNS = ["codec", "blob_file", "offset", "length", "crc32"]
"""Blob index columns that locate bytes inside the run: meaningless once the tensor is exported."""


@dataclass
class BlobExport:
    """What exporting one blob kind's tensors wrote."""

    index: pa.Table
    arrays: list[Path] = field(default_factory=list)
    unreadable: int = 0


def is_blob_table(table: pa.Table) -> bool:
    """Whether `table` holds blob index rows (every blob index column is there)."""
    return all(c in table.column_names for c in BLOB_COLUMNS)


def export_blobs(reader: RunReader, table: pa.Table, out_dir: Path, subdir: str) -> BlobExport:
    """Save the tensor of every row of `table` under `out_dir/subdir/` as `.npy`; returns the index
    table (blob positions replaced by a `file` column, relative to `out_dir`) and the files."""
    folder = out_dir / subdir
    folder.mkdir(parents=True, exist_ok=True)
    result = BlobExport(index=table)
    files: list[str | None] = []
    ranks = table.column("rank").to_pylist() if "rank" in table.column_names else [0] * table.num_rows
    rows = table.select(["step"] + BLOB_COLUMNS).to_pylist()
    for i, (row, rank) in enumerate(zip(rows, ranks)):
        try:
            array = reader._read_blob(rank, row)
        except CorruptRunError:
            files.append(None)
            result.unreadable += 1
            continue
        name = f"step{row['step']:09d}-rank{rank:05d}-{i:06d}.npy"
        np.save(folder / name, array, allow_pickle=False)
        result.arrays.append(folder / name)
        files.append(f"{subdir}/{name}")
    index = table.drop_columns([c for c in POSITION_COLUMNS if c in table.column_names])
    result.index = index.append_column("file", pa.array(files, pa.string()))
    return result
