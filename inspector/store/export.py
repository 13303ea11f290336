"""Exporting a run's tables to Parquet or CSV files, one file per record kind."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from inspector.store.reader import RunReader, Steps

FORMATS = ("parquet", "csv")


def export_run(reader: RunReader, out_dir: str | Path, fmt: str, *, kinds: list[str] | None = None,
               steps: Steps = None) -> list[Path]:
    """Write every (or each chosen) kind of the run to `out_dir`; returns the files written.

    Blob kinds export their index rows (where each tensor lies), not the tensors. CSV cannot hold
    list columns, so those become JSON text.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in kinds or sorted(reader.kinds()):
        table = reader.read_table(kind, steps=steps)
        if table.num_rows == 0:
            continue
        table = _plain_dictionaries(table)
        path = out / f"{kind}.{fmt}"
        if fmt == "parquet":
            pq.write_table(table, path)
        else:
            pacsv.write_csv(_lists_as_json(table), path)
        written.append(path)
    return written


def _plain_dictionaries(table: pa.Table) -> pa.Table:
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


def _lists_as_json(table: pa.Table) -> pa.Table:
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            text = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
    return table
