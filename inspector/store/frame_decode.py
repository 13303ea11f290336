"""Decoding one frame's payload without trusting it.

A payload whose checksums hold can still lie: a crafted or buggy writer can declare buffer
lengths, offsets or dictionary indices that point outside the message, and Arrow's readers trust
them (reading such a batch can crash the process or loop for a long time). Every batch is therefore
validated in full before anyone touches its values, and checked against the kind it claims to be.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from inspector.schema import BLOB_INDEX_FIELDS, KindSpec
from inspector.store.errors import one_line
from inspector.store.format import FrameHeader

_BLOB_COLUMNS = [f.name for f in BLOB_INDEX_FIELDS]


class BadRecordError(ValueError):
    """A frame's payload is not a valid record of its kind (the message says why, in one line)."""


def decode_payload(data: bytes, header: FrameHeader, spec: KindSpec | None,
                   reference: pa.Schema | None, *, check_steps: bool = True) -> pa.Table:
    """The rows of one frame, fully validated.

    `spec` is the registered kind of the header's id (None for a kind this process does not know,
    e.g. from a plugin not installed here); `reference` is the schema other frames of that unknown
    kind had, if any. With `check_steps=False` the caller checks that the steps lie within the
    header's range (`require_steps_within`), e.g. for many frames at once.
    """
    if spec is not None and header.version > spec.version:
        raise BadRecordError(f"written by a newer inspector (kind version {header.version}, "
                             f"this one reads up to {spec.version})")
    try:
        # The one record batch a frame holds (anything after it is not ours): half the cost of read_all.
        table = pa.Table.from_batches([pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch()])
        table.validate(full=True)
    except Exception as exc:  # noqa: BLE001 - Arrow raises many types for malformed input
        raise BadRecordError(f"undecodable ({type(exc).__name__}: {one_line(exc, 160)})") from None
    expected = spec.schema if spec is not None and header.version == spec.version else reference
    if expected is not None and not table.schema.equals(expected, check_metadata=False):
        raise BadRecordError("holds columns other than its kind's")
    if "step" not in table.schema.names or not pa.types.is_integer(table.schema.field("step").type):
        raise BadRecordError("has no integer step column")
    if table.column("step").null_count:
        raise BadRecordError("has rows without a step")
    if check_steps:
        require_steps_within(table, header)
    if spec is not None and spec.blob and any(table.column(c).null_count for c in _BLOB_COLUMNS):
        raise BadRecordError("has blob index rows with empty fields")
    return table


def require_steps_within(table: pa.Table, header: FrameHeader) -> None:
    """BadRecordError when the (validated) table holds steps outside the header's range."""
    if table.num_rows == 0:
        return
    lo, hi = pc.min_max(table.column("step")).values()
    if lo.as_py() < header.step_min or hi.as_py() > header.step_max:
        raise BadRecordError(f"holds steps {lo.as_py()}..{hi.as_py()} outside the "
                             f"{header.step_min}..{header.step_max} its header declares")

