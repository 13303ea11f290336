"""Exporting a run to Parquet or CSV: one table file per record kind, tensors as `.npy` files.

```
OUT/
  scalar.parquet            one file per kind, named by the kind (plugin kinds included)
  weight_norm.parquet
  attention_map.parquet     blob kinds: an index, one row per tensor, `file` points to its .npy
  attention_map/step000000120-rank00000-000017.npy
```

Every kind present in the run is exported under its name (see `kind_names`): registered here, or
as the run itself records it when its plugin is not installed; a kind with no knowable name is
exported as `unnamed-kind-<id>` and a note says so. Nothing is dropped silently: kinds asked for
but absent, kinds without a name and tensors that could not be read are listed in `notes`.
Tensors are saved with `np.save(allow_pickle=False)` and read back with `np.load(path,
allow_pickle=False)`: nothing in an export needs unpickling. CSV cannot hold list columns, so those
become JSON text (`"[4, 64, 64]"`), and binary ones (generator states) base64 text.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from inspector.schema import kind_for_id
from inspector.store.errors import one_line
from inspector.store.export_blobs import export_blobs, is_blob_table
from inspector.store.kind_names import FALLBACK, KindName, read_kind, resolve_kind_names
from inspector.store.reader import RunReader, Steps

FORMATS = ("parquet", "csv")


@dataclass
class KindExport:
    """What was written for one kind: its table file, row count and (blob kinds) tensor files."""

    kind: KindName
    rows: int
    table: Path
    arrays: list[Path] = field(default_factory=list)
    unreadable: int = 0


@dataclass
class ExportReport:
    """Everything one export wrote, and what a person should know about it (`notes`)."""

    out_dir: Path
    fmt: str
    kinds: list[KindExport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        """Every file written: each kind's table, then its tensor files."""
        return [p for k in self.kinds for p in [k.table, *k.arrays]]

    def describe(self) -> list[str]:
        """What was written, for a person: one line per kind (rows, files), then the total."""
        if not self.kinds:
            return []
        width = max(len("kind"), *(len(k.kind.name) for k in self.kinds))
        lines = [f"wrote {self.out_dir} ({self.fmt}):", f"  {'kind':<{width}}  {'rows':>9}  files"]
        for k in self.kinds:
            files = k.table.name + (f" + {len(k.arrays):,} .npy in {k.table.stem}/" if k.arrays else "")
            lines.append(f"  {k.kind.name:<{width}}  {k.rows:>9,}  {files}")
        size = sum(p.stat().st_size for p in self.files)
        lines.append(f"{len(self.files):,} files, {sum(k.rows for k in self.kinds):,} rows, {size / 2**20:.1f} MiB")
        return lines


def export_run(reader: RunReader, out_dir: str | Path, fmt: str, *, kinds: list[str] | None = None,
               steps: Steps = None) -> ExportReport:
    """Write every (or each chosen) kind of the run within `steps` to `out_dir`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out, fmt)
    names = sorted(resolve_kind_names(reader).values(), key=lambda k: k.name)
    chosen = names
    if kinds:
        by_name = {k.name: k for k in names}
        chosen = [by_name[n] for n in dict.fromkeys(kinds) if n in by_name]
        for n in dict.fromkeys(kinds):
            if n not in by_name:
                report.notes.append(f"no records of kind {n!r} in this run")
    for kind in chosen:
        try:
            done = _export_kind(reader, kind, out, fmt, steps)
        except OSError:
            raise
        except pa.ArrowException as exc:    # e.g. a plugin kind's column type that CSV cannot hold
            report.notes.append(f"{kind.name}: not exported ({type(exc).__name__}: {one_line(exc, 200)})")
            continue
        if done is None:
            continue
        report.kinds.append(done)
        if kind.source == FALLBACK:
            report.notes.append(f"kind id {kind.kind_id} records no name in the run; its {done.rows} rows were "
                                f"exported as {done.table.name}")
        if done.unreadable:
            report.notes.append(f"{kind.name}: {done.unreadable} of {done.rows} tensors are damaged and were not "
                                "written (their rows have an empty file)")
    return report


def _export_kind(reader: RunReader, kind: KindName, out: Path, fmt: str, steps: Steps) -> KindExport | None:
    table = read_kind(reader, kind, steps=steps)
    if table.num_rows == 0:
        return None
    spec = kind_for_id(kind.kind_id)
    done = KindExport(kind, table.num_rows, out / f"{kind.file_stem}.{fmt}")
    if (spec.blob if spec is not None else is_blob_table(table)):
        blobs = export_blobs(reader, table, out, kind.file_stem)
        table, done.arrays, done.unreadable = blobs.index, blobs.arrays, blobs.unreadable
    table = _plain_dictionaries(table)
    if fmt == "parquet":
        pq.write_table(table, done.table)
    else:
        pacsv.write_csv(_lists_as_json(table), done.table)
    return done


def _plain_dictionaries(table: pa.Table) -> pa.Table:
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


def _lists_as_json(table: pa.Table) -> pa.Table:
    for i, f in enumerate(table.schema):
        if pa.types.is_nested(f.type):
            text = [None if v is None else json.dumps(v) for v in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
        elif pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            text = [None if v is None else base64.b64encode(v).decode("ascii") for v in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
    return table
