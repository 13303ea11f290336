"""Mutation families of the run-store fuzz harness (see `tests.store.fuzz_lib`).

Each family damages a copy of a recorded run in place, driven only by its `random.Random`, and
returns a `Mutation` saying what it did. Crafted frames carry valid header and payload CRCs; every
crafted "lie" is checked to be one (it fails `validate(full=True)`, has another schema, a newer
version, or an index row out of bounds), since a well-formed batch of the right schema is
indistinguishable from real data.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from inspector.schema import ATTENTION_MAP, all_kinds, kind_for_id
from inspector.store.format import (
    CLOSED_FILE,
    HEADER,
    HEADER_CRC,
    HEADER_SIZE,
    MAGIC,
    RANK_META_FILE,
    RUN_META_FILE,
    FrameHeader,
    blob_index,
    blob_name,
    decode_header,
    encode_frame,
    segment_index,
    segment_name,
)

STEP_SHIFT = 1_000_000
"""Crafted well-formed frames hold real rows moved by this many steps, so accepting one shows."""


class CannotMutate(Exception):
    """The family found nothing to apply itself to (a harness problem, reported apart)."""


@dataclass
class Mutation:
    """What a family did to the copy."""

    variant: str              # short label of the kind of damage, for grouping failures
    detail: str               # where exactly: files and offsets
    silent_ok: bool = False   # loss indistinguishable from an earlier crash of an unclosed run


@dataclass
class Ctx:
    """One case: its random source, the copied run, the case root (for files outside the run)."""

    rng: random.Random
    run: Path
    root: Path
    closed: bool              # the base run was closed cleanly (closed.json of every rank)


@dataclass(frozen=True)
class Frame:
    """A whole frame inside a segment's bytes."""

    start: int
    end: int
    header: FrameHeader

    @property
    def payload(self) -> slice:
        return slice(self.start + HEADER_SIZE, self.end)


Family = Callable[[Ctx], Mutation]
FAMILIES: dict[str, Family] = {}


def family(name: str) -> Callable[[Family], Family]:
    """Register a mutation family under `name`."""
    def add(fn: Family) -> Family:
        FAMILIES[name] = fn
        return fn
    return add


# ---- locating things in a run ------------------------------------------------------------------

def rank_dirs(run: Path) -> list[Path]:
    """The rank directories of a run, sorted."""
    return sorted(p for p in run.glob("rank-*") if p.is_dir() and not p.is_symlink())


def segments(rank_dir: Path) -> list[Path]:
    """The segment files of a rank, in order."""
    return sorted((p for p in rank_dir.iterdir() if segment_index(p.name) is not None),
                  key=lambda p: segment_index(p.name))


def blob_files(rank_dir: Path) -> list[Path]:
    """The blob files of a rank, in order."""
    return sorted((p for p in rank_dir.iterdir() if blob_index(p.name) is not None),
                  key=lambda p: blob_index(p.name))


def frames(data: bytes) -> list[Frame]:
    """The frames of an undamaged segment, in order."""
    out, pos = [], 0
    while (head := decode_header(data, pos)) is not None and pos + HEADER_SIZE + head.length <= len(data):
        out.append(Frame(pos, pos + HEADER_SIZE + head.length, head))
        pos = out[-1].end
    return out


def boundaries(data: bytes) -> set[int]:
    """Offsets where a frame starts or the segment ends."""
    return {0, len(data)} | {f.start for f in frames(data)}


def rel(ctx: Ctx, path: Path) -> str:
    """`path` relative to the run, for case descriptions."""
    return str(path.relative_to(ctx.run)) if path.is_relative_to(ctx.run) else str(path)


def pick_segment(ctx: Ctx) -> Path:
    """A non-empty segment of a random rank."""
    segs = [s for r in rank_dirs(ctx.run) for s in segments(r) if s.stat().st_size]
    if not segs:
        raise CannotMutate("no non-empty segment")
    return ctx.rng.choice(segs)


def is_last_segment(seg: Path) -> bool:
    return segments(seg.parent)[-1] == seg


def all_frames(ctx: Ctx, kind_id: int | None = None) -> list[tuple[Path, Frame]]:
    """(segment, frame) of every frame of the run, optionally of one kind."""
    return [(seg, f) for r in rank_dirs(ctx.run) for seg in segments(r) for f in frames(seg.read_bytes())
            if kind_id is None or f.header.kind_id == kind_id]


def pick_frame(ctx: Ctx, kind_id: int | None = None) -> tuple[Path, Frame]:
    choices = all_frames(ctx, kind_id)
    if not choices:
        raise CannotMutate(f"no frame of kind {kind_id}")
    return ctx.rng.choice(choices)


def splice(path: Path, start: int, end: int, new: bytes) -> None:
    """Replace bytes [start, end) of a file with `new`."""
    data = path.read_bytes()
    path.write_bytes(data[:start] + new + data[end:])


def place_frame(ctx: Ctx, seg: Path, frame: Frame, new: bytes, *, replace_p: float) -> str:
    """Put a crafted frame next to (or instead of) `frame`; returns where."""
    if ctx.rng.random() < replace_p:
        splice(seg, frame.start, frame.end, new)
        return "replacing"
    if ctx.rng.random() < 0.2:
        last = segments(seg.parent)[-1]
        with last.open("ab") as f:
            f.write(new)
        return f"appended to {last.name}"
    splice(seg, frame.end, frame.end, new)
    return "after"


def decode_payload(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


def encode_payload(table: pa.Table, schema: pa.Schema | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema or table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue().to_pybytes()


def shifted(table: pa.Table) -> pa.Table:
    """`table` with every step moved by STEP_SHIFT."""
    i = table.schema.get_field_index("step")
    return table.set_column(i, table.schema.field(i), pa.compute.add(table.column(i), STEP_SHIFT))


def frame_of(table: pa.Table, kind_id: int, version: int, schema: pa.Schema | None = None) -> bytes:
    """A whole frame (valid CRCs) holding `table`; its step range is 0..0 when `step` is not int."""
    try:
        lo, hi = (v.as_py() for v in pa.compute.min_max(table.column("step")).values())
    except (KeyError, pa.ArrowException):
        lo = hi = None
    if not (isinstance(lo, int) and isinstance(hi, int)):
        lo = hi = 0
    return encode_frame(kind_id, version, encode_payload(table, schema), lo, hi)


def is_lie(payload: bytes, kind_id: int, version: int) -> bool:
    """True when no honest reader could take `payload` as rows of the kind (see the module doc)."""
    spec = kind_for_id(kind_id)
    if spec is None or version != spec.version:
        return True
    try:
        table = decode_payload(payload)
        if not table.schema.equals(spec.schema):
            return True
        table.validate(full=True)
    except Exception:   # noqa: BLE001 - anything pyarrow rejects is a lie
        return True
    return False


# ---- byte-level damage to segments -------------------------------------------------------------

@family("pristine")
def m_pristine(ctx: Ctx) -> Mutation:
    """No damage: the control (every column must stay 0)."""
    return Mutation("none", "")


@family("bitflip")
def m_bitflip(ctx: Ctx) -> Mutation:
    seg = pick_segment(ctx)
    data = bytearray(seg.read_bytes())
    heads = {f.start for f in frames(bytes(data))}
    spots = [ctx.rng.randrange(len(data)) for _ in range(ctx.rng.choice([1, 1, 1, 2, 3, 8]))]
    for pos in spots:
        data[pos] ^= 1 << ctx.rng.randrange(8)
    seg.write_bytes(bytes(data))
    where = "header" if any(0 <= p - h < HEADER_SIZE for p in spots for h in heads) else "payload"
    return Mutation(f"{where}", f"{rel(ctx, seg)} bits at {spots}")


@family("overwrite")
def m_overwrite(ctx: Ctx) -> Mutation:
    seg = pick_segment(ctx)
    data = seg.read_bytes()
    n = ctx.rng.choice([1, 2, 4, 8, 16, 36, 64, 256])
    pos = ctx.rng.randrange(len(data))
    fill = ctx.rng.choice(["zeros", "ones", "random", "magic", "header"])
    if fill == "header":      # a valid header from elsewhere: its CRC holds, its length lies here
        src = ctx.rng.choice(frames(data))
        new = data[src.start:src.start + HEADER_SIZE]
    else:
        new = {"zeros": b"\0" * n, "ones": b"\xff" * n, "magic": (b"DSIF" * n)[:n],
               "random": ctx.rng.randbytes(n)}[fill]
    new = new[:len(data) - pos]
    splice(seg, pos, pos + len(new), new)
    return Mutation(fill, f"{rel(ctx, seg)} {len(new)} bytes at {pos}")


def _truncate(ctx: Ctx, seg: Path, pos: int, label: str) -> Mutation:
    data = seg.read_bytes()
    at_boundary = pos in boundaries(data)
    os.truncate(seg, pos)
    where = "last" if is_last_segment(seg) else "middle"
    return Mutation(f"{label}-{where}-segment" + ("-at-boundary" if at_boundary and label == "arbitrary" else ""),
                    f"{rel(ctx, seg)} cut at {pos} of {len(data)}", silent_ok=at_boundary and not ctx.closed)


@family("truncate")
def m_truncate(ctx: Ctx) -> Mutation:
    seg = pick_segment(ctx)
    return _truncate(ctx, seg, ctx.rng.randrange(seg.stat().st_size), "arbitrary")


@family("truncate_frame")
def m_truncate_frame(ctx: Ctx) -> Mutation:
    seg = pick_segment(ctx)
    f = ctx.rng.choice(frames(seg.read_bytes()))
    how = ctx.rng.choices(["boundary", "header-only", "mid-header"], [7, 2, 1])[0]
    pos = {"boundary": f.start, "header-only": f.start + HEADER_SIZE,
           "mid-header": f.start + ctx.rng.randrange(1, HEADER_SIZE)}[how]
    return _truncate(ctx, seg, pos, how)


@family("insert")
def m_insert(ctx: Ctx) -> Mutation:
    seg = pick_segment(ctx)
    data = seg.read_bytes()
    at = ctx.rng.choice(["boundary", "arbitrary"])
    pos = ctx.rng.choice(sorted(boundaries(data))) if at == "boundary" else ctx.rng.randrange(len(data) + 1)
    what = ctx.rng.choice(["random", "zeros", "magic", "header", "hole"])
    if what == "hole":        # a sparse run of zeros at the end (a preallocated or copied-badly file)
        size = ctx.rng.choice([1 << 20, 64 << 20])
        os.truncate(seg, len(data) + size)
        return Mutation("hole-at-end", f"{rel(ctx, seg)} +{size} zero bytes")
    if what == "header":      # a header whose CRC holds and whose length swallows the frames after it
        length = ctx.rng.choice([8, 100, 5000, 1 << 29])
        head = HEADER.pack(MAGIC, 1, ctx.rng.choice(all_kinds()).id, length, 0, 0, 0)
        new = head + HEADER_CRC.pack(zlib.crc32(head))
    else:
        n = ctx.rng.choice([1, 3, 8, 36, 64])
        new = {"random": ctx.rng.randbytes(n), "zeros": b"\0" * n, "magic": b"DSIF" * (n // 4 + 1)}[what]
    splice(seg, pos, pos, new)
    return Mutation(f"{what}-at-{at}", f"{rel(ctx, seg)} {len(new)} bytes at {pos}")


@family("delete")
def m_delete(ctx: Ctx) -> Mutation:
    seg = pick_segment(ctx)
    data = seg.read_bytes()
    if ctx.rng.random() < 0.3 and len(fs := frames(data)) > 1:
        i = ctx.rng.randrange(len(fs))
        j = ctx.rng.randrange(i, min(len(fs), i + 3))
        start, end, how = fs[i].start, fs[j].end, "whole-frames"
    else:
        start = ctx.rng.randrange(len(data))
        end, how = min(len(data), start + ctx.rng.choice([1, 2, 5, 36, 100, 1000])), "arbitrary"
    bounds = boundaries(data)
    aligned = start in bounds and end in bounds
    splice(seg, start, end, b"")
    return Mutation(how + ("-aligned" if aligned and how == "arbitrary" else ""),
                    f"{rel(ctx, seg)} bytes [{start}, {end})", silent_ok=aligned and not ctx.closed)


@family("dup_frame")
def m_dup_frame(ctx: Ctx) -> Mutation:
    seg, f = pick_frame(ctx)
    frame = seg.read_bytes()[f.start:f.end]
    # Not into another rank: a valid frame there is indistinguishable from that rank's own data.
    where = ctx.rng.choice(["after-itself", "end-of-last-segment", "start-of-next-segment"])
    target, pos = seg, f.end
    if where == "end-of-last-segment":
        target = segments(seg.parent)[-1]
        pos = target.stat().st_size
    elif where == "start-of-next-segment":
        segs = segments(seg.parent)
        target, pos = segs[min(segs.index(seg) + 1, len(segs) - 1)], 0
    splice(target, pos, pos, frame)
    return Mutation(where, f"frame {rel(ctx, seg)}+{f.start} copied to {rel(ctx, target)}+{pos}")


@family("seg_delete")
def m_seg_delete(ctx: Ctx) -> Mutation:
    choices = [s for r in rank_dirs(ctx.run) for s in segments(r)[:-1]]
    if not choices:
        raise CannotMutate("no rank with two segments")
    seg = ctx.rng.choice(choices)
    seg.unlink()
    return Mutation("first" if segment_index(seg.name) == 0 else "middle", rel(ctx, seg))


@family("seg_empty")
def m_seg_empty(ctx: Ctx) -> Mutation:
    rank = ctx.rng.choice(rank_dirs(ctx.run))
    segs = segments(rank)
    last = ctx.rng.random() < 0.7 or len(segs) < 2
    seg = segs[-1] if last else ctx.rng.choice(segs[:-1])
    os.truncate(seg, 0)
    return Mutation("last" if last else "middle", rel(ctx, seg), silent_ok=last and not ctx.closed)


# ---- crafted frames with valid checksums -------------------------------------------------------

@dataclass(frozen=True)
class _IpcBatch:
    """Where one record batch (or dictionary batch) message lies inside an IPC stream."""

    nodes: int        # offset of the first FieldNode {length, null_count}
    n_nodes: int
    buffers: int      # offset of the first Buffer {offset, length}
    n_buffers: int
    body: int
    body_len: int
    message: int      # offset of the Message table (bodyLength is its field 3)
    prefix: int       # offset of the continuation marker and metadata length
    dictionary: bool


def _u32(b: bytes, at: int) -> int:
    return struct.unpack_from("<I", b, at)[0]


def _fb_field(b: bytes, table: int, index: int) -> int | None:
    """Absolute offset of field `index` of the flatbuffer table at `table` (None when absent).

    pyarrow exposes no flatbuffer access and the flatbuffers package is not a dependency; this
    reads only the vtable, which is all the lies below need.
    """
    vtable = table - struct.unpack_from("<i", b, table)[0]
    vt_size = struct.unpack_from("<H", b, vtable)[0]
    if 4 + 2 * index >= vt_size:
        return None
    off = struct.unpack_from("<H", b, vtable + 4 + 2 * index)[0]
    return table + off if off else None


def _fb_ref(b: bytes, table: int, index: int) -> int:
    at = _fb_field(b, table, index)
    if at is None:
        raise CannotMutate(f"flatbuffer field {index} absent")
    return at + _u32(b, at)


def ipc_batches(payload: bytes) -> list[_IpcBatch]:
    """The record and dictionary batch messages of an IPC stream, with their struct vectors."""
    reader, out = pa.BufferReader(payload), []
    while True:
        start = reader.tell()
        try:
            msg = pa.ipc.read_message(reader)
        except EOFError:
            return out
        if msg.type not in ("record batch", "dictionary"):
            continue
        meta = start + 8
        message = meta + _u32(payload, meta)
        header = _fb_ref(payload, message, 2)
        batch = header if msg.type == "record batch" else _fb_ref(payload, header, 1)
        nodes, buffers = _fb_ref(payload, batch, 1), _fb_ref(payload, batch, 2)
        body_len = msg.body.size if msg.body is not None else 0
        out.append(_IpcBatch(nodes + 4, _u32(payload, nodes), buffers + 4, _u32(payload, buffers),
                             reader.tell() - body_len, body_len, message, start, msg.type == "dictionary"))


def _roles(typ: pa.DataType) -> list[str]:
    """The IPC buffers of one column of `typ`, depth first."""
    if pa.types.is_dictionary(typ):
        return ["validity", "indices"]
    if pa.types.is_string(typ) or pa.types.is_binary(typ):
        return ["validity", "offsets", "utf8" if pa.types.is_string(typ) else "bytes"]
    if pa.types.is_list(typ):
        return ["validity", "list-offsets", *_roles(typ.value_type)]
    if pa.types.is_null(typ):
        return []
    return ["validity", "data"]


def buffer_roles(schema: pa.Schema, batch: _IpcBatch, dict_no: int) -> list[str]:
    """Role of each buffer of a batch message (a dictionary batch holds one dictionary's values)."""
    if batch.dictionary:
        dicts = [f.type.value_type for f in schema if pa.types.is_dictionary(f.type)]
        return _roles(dicts[min(dict_no, len(dicts) - 1)])
    return [r for f in schema for r in _roles(f.type)]


_I64 = struct.Struct("<q")
_I32 = struct.Struct("<i")


def _lie_in_payload(rng: random.Random, payload: bytes, schema: pa.Schema) -> tuple[bytes, str, str]:
    """One lie written into the IPC bytes of a real payload; returns (payload, variant, detail)."""
    b = bytearray(payload)
    batches = ipc_batches(payload)
    which = rng.randrange(len(batches))
    m = batches[which]
    dict_no = sum(x.dictionary for x in batches[:which])
    roles = buffer_roles(schema, m, dict_no)
    kind = rng.choice(["node-length", "null-count", "buffer-offset", "buffer-length", "body-value",
                       "body-value", "body-value", "body-length", "metadata-length"])
    if kind in ("node-length", "null-count") and m.n_nodes:
        i = rng.randrange(m.n_nodes)
        at = m.nodes + 16 * i + (0 if kind == "node-length" else 8)
        old = _I64.unpack_from(b, at)[0]
        _I64.pack_into(b, at, rng.choice([1 << 40, (1 << 62) + 1, -1, old + 1, old * 1000 + 7]))
        return bytes(b), kind, f"node {i}: {old} -> {_I64.unpack_from(b, at)[0]}"
    if kind in ("buffer-offset", "buffer-length") and m.n_buffers:
        i = rng.randrange(m.n_buffers)
        at = m.buffers + 16 * i + (0 if kind == "buffer-offset" else 8)
        old = _I64.unpack_from(b, at)[0]
        _I64.pack_into(b, at, rng.choice([m.body_len + 8, 1 << 40, -8, old + 1, old + 4096]))
        role = roles[i] if i < len(roles) else "?"
        return bytes(b), kind, f"buffer {i} ({role}): {old} -> {_I64.unpack_from(b, at)[0]}"
    if kind == "body-length":
        at = _fb_field(payload, m.message, 3)
        if at is not None:
            _I64.pack_into(b, at, rng.choice([1 << 40, -1, m.body_len + 4096]))
            return bytes(b), kind, f"bodyLength {m.body_len} -> {_I64.unpack_from(b, at)[0]}"
    if kind == "metadata-length":
        _I32.pack_into(b, m.prefix + 4, rng.choice([-8, 1 << 30, _I32.unpack_from(b, m.prefix + 4)[0] + 8]))
        return bytes(b), kind, f"-> {_I32.unpack_from(b, m.prefix + 4)[0]}"
    return _lie_in_body(rng, b, m, roles)


def _lie_in_body(rng: random.Random, b: bytearray, m: _IpcBatch, roles: list[str]) -> tuple[bytes, str, str]:
    """Change values inside a buffer: dictionary indices, list/string offsets, UTF-8 bytes."""
    targets = [i for i, r in enumerate(roles) if r in ("indices", "offsets", "list-offsets", "utf8")
               and i < m.n_buffers and _I64.unpack_from(b, m.buffers + 16 * i + 8)[0] >= 4]
    if not targets:
        raise CannotMutate("no buffer to lie in")
    i = rng.choice(targets)
    off, length = _I64.unpack_from(b, m.buffers + 16 * i)[0], _I64.unpack_from(b, m.buffers + 16 * i + 8)[0]
    start = m.body + off
    if roles[i] == "utf8":
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])
        pos = start + rng.randrange(max(1, length - len(bad) + 1))
        b[pos:pos + len(bad)] = bad[:start + length - pos]
        return bytes(b), "invalid-utf8", f"{bad!r} at body+{pos - m.body} (buffer {i})"
    n = length // 4
    j = rng.randrange(n)
    values = list(_I32.unpack_from(b, start + 4 * k)[0] for k in range(n))
    if roles[i] == "indices":
        new = rng.choice([-1, 1 << 20, (1 << 31) - 1, 255])
    else:   # offsets: past the values, decreasing, or negative
        new = rng.choice([values[-1] + 1000, (1 << 31) - 1, -4, values[j] - 3 if values[j] else -1])
    _I32.pack_into(b, start + 4 * j, new)
    variant = {"indices": "dict-index", "offsets": "string-offset", "list-offsets": "list-offset"}[roles[i]]
    return bytes(b), variant, f"value {j} of buffer {i}: {values[j]} -> {new}"


@family("lying_arrow")
def m_lying_arrow(ctx: Ctx) -> Mutation:
    seg, f = pick_frame(ctx)
    data = seg.read_bytes()
    payload = data[f.payload]
    spec = kind_for_id(f.header.kind_id)
    for _ in range(40):
        try:
            lie, variant, what = _lie_in_payload(ctx.rng, payload, spec.schema)
        except CannotMutate:
            continue
        if is_lie(lie, f.header.kind_id, f.header.version):
            new = encode_frame(f.header.kind_id, f.header.version, lie, f.header.step_min, f.header.step_max)
            where = place_frame(ctx, seg, f, new, replace_p=0.3)
            return Mutation(variant, f"{spec.name} frame {rel(ctx, seg)}+{f.start}: {variant} {what}; {where}")
    raise CannotMutate("no lie found")


@family("version_high")
def m_version_high(ctx: Ctx) -> Mutation:
    seg, f = pick_frame(ctx)
    spec = kind_for_id(f.header.kind_id)
    table = shifted(decode_payload(seg.read_bytes()[f.payload]))
    version = spec.version + ctx.rng.choice([1, 2, 100, 0xFFFF - spec.version])
    new = frame_of(table, spec.id, version, spec.schema)
    where = place_frame(ctx, seg, f, new, replace_p=0.3)
    return Mutation(where.split(" ")[0], f"{spec.name} v{version} at {rel(ctx, seg)}+{f.start} {where}")


def _retyped(rng: random.Random, table: pa.Table) -> tuple[pa.Table, str]:
    i = rng.randrange(table.num_columns)
    field = table.schema.field(i)
    t = field.type
    if pa.types.is_dictionary(t):
        new_t = rng.choice([pa.string(), pa.dictionary(pa.int8(), pa.string()), pa.large_string()])
    elif pa.types.is_list(t):
        new_t = rng.choice([pa.large_list(t.value_type), pa.list_(pa.string()), pa.string()])
    elif pa.types.is_string(t):
        new_t = rng.choice([pa.large_string(), pa.binary(), pa.dictionary(pa.int32(), pa.string())])
    elif pa.types.is_floating(t):
        new_t = rng.choice([pa.float32(), pa.string(), pa.int64()])
    elif pa.types.is_boolean(t):
        new_t = rng.choice([pa.int8(), pa.string()])
    else:
        new_t = rng.choice([pa.int32(), pa.float64(), pa.string(), pa.uint64()])
    try:
        col = table.column(i).cast(new_t, safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        col = pa.nulls(table.num_rows, new_t)
    return table.set_column(i, pa.field(field.name, new_t), col), f"{field.name}: {t} -> {new_t}"


@family("wrong_schema")
def m_wrong_schema(ctx: Ctx) -> Mutation:
    seg, f = pick_frame(ctx)
    spec = kind_for_id(f.header.kind_id)
    table = shifted(decode_payload(seg.read_bytes()[f.payload]))
    how = ctx.rng.choice(["other-kind", "retyped", "dropped-column", "added-column", "renamed-column"])
    if how == "other-kind":
        other_seg, other = pick_frame(ctx)
        table = shifted(decode_payload(other_seg.read_bytes()[other.payload]))
        what = f"payload of {kind_for_id(other.header.kind_id).name}"
    elif how == "retyped":
        table, what = _retyped(ctx.rng, table)
    elif how == "dropped-column":
        name = ctx.rng.choice(table.column_names)
        table, what = table.drop_columns([name]), f"without {name}"
    elif how == "added-column":
        table, what = table.append_column("fuzz_extra", pa.array(range(table.num_rows), pa.int64())), "+fuzz_extra"
    else:
        i = ctx.rng.randrange(table.num_columns)
        names = list(table.column_names)
        names[i] += "_x"
        table, what = table.rename_columns(names), f"renamed {names[i]}"
    table = table.replace_schema_metadata(spec.schema.metadata)
    new = frame_of(table, spec.id, spec.version)
    if not is_lie(new[HEADER_SIZE:], spec.id, spec.version):
        raise CannotMutate(f"{how} gave the kind's own schema")
    where = place_frame(ctx, seg, f, new, replace_p=0.3)
    return Mutation(how, f"{spec.name} frame {rel(ctx, seg)}+{f.start}: {what}; {where}")


def _index_lie(rng: random.Random, row: dict[str, Any], blob_sizes: dict[int, int]) -> tuple[str, Any]:
    """A (column, value) that makes a real attention-map index row lie detectably."""
    size = blob_sizes.get(row["blob_file"], 0)
    raw = row["codec"] == "none"
    options: list[tuple[str, Any]] = [
        ("codec", rng.choice(["bogus", "gzip", "snappy", "brotli", "LZ4", "", "none ", "zstd\0", "x" * 300])),
        ("codec", None),
        ("dtype", rng.choice(["O", "object", "<U4", "|S2", "|V0", "V8", "bogus", "", "<f2,<f2", "|V1000000000"])),
        ("dtype", None),
        ("shape", rng.choice([[-1, 8, 8], [2, -8, 8], [(1 << 31) - 1] * 3, [1 << 30, 1 << 30], [None, 8]])),
        ("shape", None),
        ("offset", rng.choice([-1, size + 1, size - row["length"] // 2 + 1, 1 << 62])),
        ("length", rng.choice([-1, 1 << 40, size - row["offset"] + 1])),
        ("blob_file", rng.choice([max(blob_sizes) + 1, 99, -1, (1 << 31) - 1])),
        ("offset", None), ("length", None), ("blob_file", None),
    ]
    if raw:   # without compression the byte count must match the shape and dtype
        options += [("dtype", rng.choice(["<f8", "|u1", "<c16"])), ("shape", rng.choice([[2, 8, 4], [], [0]])),
                    ("length", rng.choice([0, row["length"] - 2]))]
    return rng.choice(options)


@family("blob_index_lie")
def m_blob_index_lie(ctx: Ctx) -> Mutation:
    seg, f = pick_frame(ctx, ATTENTION_MAP.id)
    sizes = {blob_index(p.name): p.stat().st_size for p in blob_files(seg.parent)}
    rows = decode_payload(seg.read_bytes()[f.payload]).to_pylist()
    r = ctx.rng.randrange(len(rows))
    col, value = _index_lie(ctx.rng, rows[r], sizes)
    rows[r][col] = value
    replace = ctx.rng.random() < 0.4      # else an extra frame of the lying row alone (no duplicates)
    table = pa.Table.from_pylist(rows if replace else [rows[r]], schema=ATTENTION_MAP.schema)
    new = frame_of(table, ATTENTION_MAP.id, ATTENTION_MAP.version, ATTENTION_MAP.schema)
    where = place_frame(ctx, seg, f, new, replace_p=1.0 if replace else 0.0)
    shown = repr(value) if len(repr(value)) < 40 else repr(value)[:37] + "..."
    return Mutation(f"{col}{'-null' if value is None else ''}",
                    f"row {r} of {rel(ctx, seg)}+{f.start}: {col}={shown}; {where}")


# ---- blob files --------------------------------------------------------------------------------

@family("blob_damage")
def m_blob_damage(ctx: Ctx) -> Mutation:
    blobs = [b for r in rank_dirs(ctx.run) for b in blob_files(r) if b.stat().st_size]
    blob = ctx.rng.choice(blobs)
    data = bytearray(blob.read_bytes())
    how = ctx.rng.choice(["bitflip", "truncate", "delete", "append", "zero-range", "emptied"])
    if how == "bitflip":
        pos = ctx.rng.randrange(len(data))
        data[pos] ^= 1 << ctx.rng.randrange(8)
        blob.write_bytes(bytes(data))
        return Mutation(how, f"{rel(ctx, blob)} at {pos}")
    if how == "truncate":
        pos = ctx.rng.randrange(len(data))
        os.truncate(blob, pos)
        return Mutation(how, f"{rel(ctx, blob)} cut at {pos} of {len(data)}")
    if how == "delete":
        blob.unlink()
    elif how == "append":
        with blob.open("ab") as f:
            f.write(ctx.rng.randbytes(ctx.rng.choice([1, 100, 4096])))
    elif how == "zero-range":
        pos = ctx.rng.randrange(len(data))
        n = ctx.rng.choice([1, 16, 300])
        data[pos:pos + n] = bytes(len(data[pos:pos + n]))
        blob.write_bytes(bytes(data))
        return Mutation(how, f"{rel(ctx, blob)} [{pos}, {pos + n})")
    else:
        os.truncate(blob, 0)
    return Mutation(how, rel(ctx, blob))


# ---- JSON files --------------------------------------------------------------------------------

ODD_VALUES: list[Any] = [None, True, False, -1, 0, 1 << 63, 10 ** 30, 1.5, float("nan"), float("inf"), "",
                         "x", "ñ\u202e\x1b[31m", [], [1, "a"], {}, {"a": {"b": None}}]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _special_file(ctx: Ctx, path: Path) -> str:
    """Replace a file by a directory, a FIFO or a symlink; returns which."""
    how = ctx.rng.choice(["directory", "fifo", "symlink-dev-zero", "symlink-dangling", "symlink-loop",
                          "symlink-elsewhere"])
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    if how == "directory":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "symlink-dev-zero":
        path.symlink_to("/dev/zero")
    elif how == "symlink-dangling":
        path.symlink_to(ctx.root / "nowhere")
    elif how == "symlink-loop":
        path.symlink_to(path.name)
    else:
        outside = ctx.root / "outside" / path.name
        outside.parent.mkdir(exist_ok=True)
        outside.write_text(json.dumps({"name": "elsewhere", "format_version": 1}))
        path.symlink_to(outside)
    return how


def _json_lie(ctx: Ctx, path: Path, special: dict[str, list[Any]]) -> Mutation:
    """Damage one JSON file of a run; `special` lists file-specific odd values per key."""
    rng = ctx.rng
    text = path.read_text() if path.is_file() else "{}"
    data = json.loads(text)
    how = rng.choice(["missing", "invalid-json", "empty", "not-object", "wrong-type", "wrong-type",
                      "deleted-key", "huge-string", "deep-nesting", "encoding", "special-file",
                      "file-specific", "file-specific", "huge-number"])
    key = rng.choice(sorted(set(data) | set(special)) or ["x"])
    out: str | bytes
    if how == "missing":
        path.unlink()
        return Mutation(how, rel(ctx, path))
    if how == "special-file":
        return Mutation(_special_file(ctx, path), rel(ctx, path))
    if how == "invalid-json":
        pos = rng.randrange(len(text))
        out = rng.choice([text[:pos], text[:pos] + "{" + text[pos:], text + ",]", text.replace('"', "'", 1)])
    elif how == "empty":
        out = ""
    elif how == "not-object":
        out = rng.choice(["[]", "null", '"x"', "42", "true", "[" + text + "]"])
    elif how == "wrong-type":
        data[key] = rng.choice(ODD_VALUES)
        out = json.dumps(data)
    elif how == "deleted-key":
        data.pop(key, None)
        out = json.dumps(data)
    elif how == "huge-string":
        data[key] = "x" * rng.choice([10 ** 5, 10 ** 6, 17 << 20])
        out = json.dumps(data)
    elif how == "deep-nesting":
        data[key] = "@@"
        out = json.dumps(data).replace('"@@"', _nested(rng.choice([40, 1000, 100_000])))
    elif how == "encoding":
        enc = rng.choice(["utf-16", "bom", "latin-1-bytes", "nul"])
        out = {"utf-16": text.encode("utf-16"), "bom": b"\xef\xbb\xbf" + text.encode(),
               "latin-1-bytes": (text.rstrip()[:-1] + ', "h": "\xe9\xff"}').encode("latin-1", "replace"),
               "nul": text.encode()[:-1] + b"\0}"}[enc]
        how = f"encoding-{enc}"
    elif how == "huge-number":
        data[key] = "@@"
        out = json.dumps(data).replace('"@@"', rng.choice(["1e999", "-1e999", "1" + "0" * 400, "-" + "9" * 5000]))
    else:
        if not special:
            data[key] = rng.choice(ODD_VALUES)
        else:
            key = rng.choice(sorted(special))
            data[key] = rng.choice(special[key])
        out = json.dumps(data)
        how = f"{key}-lie"
    if isinstance(out, bytes):
        path.write_bytes(out)
    else:
        path.write_text(out)
    return Mutation(how, f"{rel(ctx, path)} key {key!r}")


@family("run_json")
def m_run_json(ctx: Ctx) -> Mutation:
    return _json_lie(ctx, ctx.run / RUN_META_FILE, {
        "world_size": [0, 1, 3, 64, 1 << 20, 1 << 40], "format_version": [0, 2, 99, 1.0, "1"],
        "name": ["", "\x1b]0;title\x07", "a" * 300], "created": [-1, 1e300, "yesterday"]})


@family("rank_json")
def m_rank_json(ctx: Ctx) -> Mutation:
    rank = ctx.rng.choice(rank_dirs(ctx.run))
    return _json_lie(ctx, rank / RANK_META_FILE, {
        "rank": [5, -1, "0", 1 << 40], "world_size": [0, 7, "2"],
        "sessions": [[], "x", [1, 2], [{"first_segment": -1}], [{"first_segment": 10 ** 30}],
                     [{"session": 0, "first_segment": 0}, {"session": 1, "first_segment": 99}],
                     [{"first_segment": "0", "first_blob": None}]],
        "session": [-1, 99, "0"]})


@family("closed_json")
def m_closed_json(ctx: Ctx) -> Mutation:
    rank = ctx.rng.choice(rank_dirs(ctx.run))
    path = rank / CLOSED_FILE
    if not path.exists():           # the crashed base: a closed.json that appeared from somewhere
        path.write_text(json.dumps({"closed_at": 1.0, "last_step": 1, "records": 1, "dropped": 0,
                                    "segments": {}, "blobs": {}}))
    seg = segments(rank)[0].name
    return _json_lie(ctx, path, {
        "segments": [{}, "x", [], {seg: -1}, {seg: 10 ** 12}, {seg: "big"}, {"../../etc/passwd": 1},
                     {segment_name(999_999): 10}, {seg: 1, "seg-abc.dsi": 2}],
        "blobs": [{}, {blob_name(0): 1}, {blob_name(7): 5}, {blob_name(0): None}],
        "last_step": [-5, "9", 1 << 70], "dropped": [-1, "lots", [1]], "records": [None, 1e308],
        "failed": ["disk full", 3, None]})


# ---- stray and special files -------------------------------------------------------------------

@family("stray_files")
def m_stray_files(ctx: Ctx) -> Mutation:
    rng = ctx.rng
    rank = rng.choice(rank_dirs(ctx.run))
    segs, blobs = segments(rank), blob_files(rank)
    seg = rng.choice(segs)
    next_seg = rank / segment_name(segment_index(segs[-1].name) + 1)
    next_blob = rank / blob_name(blob_index(blobs[-1].name) + 1) if blobs else rank / blob_name(0)
    how = rng.choice(["copy-named", "backup-names", "seven-digit-alias", "fifo-next-segment",
                      "fifo-replaces-segment", "dir-next-segment", "dir-replaces-segment", "fifo-next-blob",
                      "dir-next-blob", "fifo-replaces-blob", "dir-replaces-blob", "symlink-next-segment",
                      "symlink-replaces-segment", "junk-names", "stray-rank-copy", "huge-number-garbage"])
    detail = rel(ctx, seg)
    if how == "copy-named":
        shutil.copy(seg, rank / seg.name.replace(".dsi", " (copy).dsi"))
    elif how == "backup-names":
        for suffix in (".bak", "~", ".tmp"):
            shutil.copy(seg, rank / (seg.name + suffix))
        shutil.copy(seg, rank / ("." + seg.name + ".swp"))
    elif how == "seven-digit-alias":      # seg-0000001.dsi: the same number as seg-000001.dsi
        alias = rank / f"seg-{segment_index(seg.name):07d}.dsi"
        shutil.copy(seg, alias)
        detail = f"{rel(ctx, alias)} = copy of {seg.name}"
    elif how.endswith("next-segment") or how.endswith("next-blob"):
        target = next_seg if "segment" in how else next_blob
        _make_special(ctx, target, how.split("-")[0], rank)
        detail = rel(ctx, target)
    elif how.endswith("replaces-segment") or how.endswith("replaces-blob"):
        target = seg if "segment" in how else (rng.choice(blobs) if blobs else next_blob)
        if target.exists():
            outside = ctx.root / "outside" / rank.name / target.name
            outside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(target, outside)
        _make_special(ctx, target, how.split("-")[0], rank)
        detail = rel(ctx, target)
    elif how == "junk-names":
        for name in ("notes.txt", "seg-.dsi", "seg-abc.dsi", "blob-.bin", "seg-1234567890.dsi", "blob-00x.bin"):
            (rank / name).write_bytes(rng.randbytes(64))
    elif how == "stray-rank-copy":
        shutil.copytree(rank, ctx.run / f"{rank.name} (copy)", symlinks=True)
        (ctx.run / f"{rank.name}.tmp").write_bytes(b"x")
        detail = rank.name
    else:
        target = rank / "seg-999999999.dsi"
        target.write_bytes(rng.randbytes(rng.choice([10, 1000])))
        detail = rel(ctx, target)
    return Mutation(how, detail)


def _make_special(ctx: Ctx, target: Path, what: str, rank: Path) -> None:
    """A FIFO, a directory or a symlink at `target`."""
    if what == "fifo":
        os.mkfifo(target)
    elif what == "dir":
        target.mkdir()
        (target / "inner").write_bytes(b"DSIF")
    else:
        outside = ctx.root / "outside" / rank.name / target.name
        options = [Path("/dev/zero"), ctx.root / "nowhere", Path(target.name)]
        if outside.exists():
            options.append(outside)
        others = [s for r in rank_dirs(ctx.run) if r != rank for s in segments(r)]
        if others:
            options.append(ctx.rng.choice(others))
        target.symlink_to(ctx.rng.choice(options))


# ---- rank directories --------------------------------------------------------------------------

@family("rank_dir")
def m_rank_dir(ctx: Ctx) -> Mutation:
    rng = ctx.rng
    ranks = rank_dirs(ctx.run)
    rank = rng.choice(ranks)
    how = rng.choice(["replaced-by-file", "symlink-loop", "symlink-loop-pair", "symlink-to-moved", "extra-symlink",
                      "removed", "seven-digit-alias", "renamed", "emptied", "fifo"])
    if how == "extra-symlink":
        extra = ctx.run / f"rank-{len(ranks) + rng.randrange(3):05d}"
        extra.symlink_to(rank.name)
        return Mutation(how, f"{extra.name} -> {rank.name}")
    if how == "seven-digit-alias":
        alias = ctx.run / f"rank-{int(rank.name[5:]):07d}"
        shutil.copytree(rank, alias, symlinks=True)
        return Mutation(how, f"{alias.name} = copy of {rank.name}")
    if how == "renamed":
        rank.rename(ctx.run / f"rank-{int(rank.name[5:])}")
        return Mutation(how, rank.name)
    if how == "emptied":
        for p in rank.iterdir():
            p.unlink()
        return Mutation(how, rank.name)
    if how == "symlink-to-moved":
        moved = ctx.root / "outside" / rank.name
        moved.parent.mkdir(exist_ok=True)
        shutil.move(rank, moved)
        rank.symlink_to(moved)
        return Mutation(how, rank.name)
    shutil.rmtree(rank)
    if how == "replaced-by-file":
        rank.write_bytes(rng.randbytes(100))
    elif how == "symlink-loop":
        rank.symlink_to(rank.name)
    elif how == "symlink-loop-pair":
        rank.symlink_to("loop-b")
        (ctx.run / "loop-b").symlink_to(rank.name)
    elif how == "fifo":
        os.mkfifo(rank)
    return Mutation(how, rank.name)


__all__ = ["FAMILIES", "CannotMutate", "Ctx", "Mutation", "STEP_SHIFT", "frames", "segments"]
