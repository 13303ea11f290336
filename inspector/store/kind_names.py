"""The name of every record kind present in a run, whether or not this process registered it.

A frame header holds only a 16-bit kind id (`schema.kind_id(name)`). Its payload, an Arrow IPC
stream, carries the kind's own name in the schema metadata (`inspector.kind`), written by every
writer since format version 1. So a kind from a plugin that is not installed here is still named
by the run itself: the name is taken from its first readable frame and accepted only when it hashes
to the header's id (the id is a checksum of the name). Only when no frame of a kind records a
usable name is it shown as `unnamed-kind-<id>` (`FALLBACK_PREFIX`), and callers say so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

from inspector.schema import kind_for_id, kind_id
from inspector.store.reader import RunReader, Steps, _step_bounds

FALLBACK_PREFIX = "unnamed-kind-"
KIND_NAME_KEY = b"inspector.kind"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_MAX_TRIES = 4          # frames tried per kind for its recorded name (the first normally has it)

REGISTERED, RECORDED, FALLBACK = "registered", "recorded", "fallback"


@dataclass(frozen=True)
class KindName:
    """The name a kind of a run is shown and exported under, and where that name came from:
    `registered` (this process knows the kind), `recorded` (taken from the run's own frames: a
    plugin kind whose plugin is not installed here) or `fallback` (no name could be known)."""

    kind_id: int
    name: str
    source: str

    @property
    def file_stem(self) -> str:
        """A file name for the kind's export: its name when that is a plain one, else by id."""
        return self.name if _SAFE_NAME.fullmatch(self.name) and self.name not in (".", "..") \
            else f"kind-{self.kind_id}"


@dataclass(frozen=True)
class KindSummary:
    """One kind present in a run: its name, frame count and step range (from frame headers)."""

    kind: KindName
    frames: int
    step_min: int
    step_max: int


def kind_ids(reader: RunReader) -> list[int]:
    """Ids of the kinds that have at least one frame in any rank, sorted."""
    return sorted({kid for st in reader._ranks.values() for kid, refs in st.by_kind.items() if refs})


def resolve_kind_names(reader: RunReader) -> dict[int, KindName]:
    """Every kind id present in the run → its name (registry first, then the run's own record)."""
    out: dict[int, KindName] = {}
    for kid in kind_ids(reader):
        spec = kind_for_id(kid)
        if spec is not None:
            out[kid] = KindName(kid, spec.name, REGISTERED)
            continue
        name = recorded_name(reader, kid)
        out[kid] = KindName(kid, name, RECORDED) if name else KindName(kid, f"{FALLBACK_PREFIX}{kid}", FALLBACK)
    return out


def recorded_name(reader: RunReader, kid: int) -> str | None:
    """The kind name the run's frames of id `kid` record, or None when none records a usable one.

    Frames are decoded (checksummed and validated) by the reader; a damaged one is reported there
    and the next is tried.
    """
    tried = 0
    for rank in reader.ranks:
        for ref in reader._ranks[rank].by_kind.get(kid, ()):
            if tried >= _MAX_TRIES:
                return None
            tried += 1
            table = reader._decode(ref, check_steps=False)
            if table is None:
                continue
            raw = (table.schema.metadata or {}).get(KIND_NAME_KEY)
            try:
                name = raw.decode("utf-8") if raw is not None else None
            except UnicodeDecodeError:
                name = None
            if name is not None and _SAFE_NAME.fullmatch(name) and kind_id(name) == kid:
                return name
    return None


def kind_summaries(reader: RunReader) -> list[KindSummary]:
    """Every kind present in the run with its name, frame count and step range, sorted by name."""
    names = resolve_kind_names(reader)
    out = []
    for kid, kind in names.items():
        refs = [r for st in reader._ranks.values() for r in st.by_kind.get(kid, ())]
        out.append(KindSummary(kind, len(refs), min(r.header.step_min for r in refs),
                               max(r.header.step_max for r in refs)))
    return sorted(out, key=lambda s: s.kind.name)


def read_kind(reader: RunReader, kind: KindName, *, steps: Steps = None) -> pa.Table:
    """All rows of `kind` (any rank) within `steps`, with `rank` and `session` columns.

    A named kind is read through `RunReader.read_table`; a kind without a known name by its id.
    """
    if kind.source != FALLBACK:
        return reader.read_table(kind.name, steps=steps)
    lo, hi = _step_bounds(steps)
    parts: list[pa.Table] = []
    for rank in reader.ranks:
        refs = [r for r in reader._ranks[rank].by_kind.get(kind.kind_id, ())
                if r.header.step_max >= lo and r.header.step_min <= hi]
        parts.extend(reader._decode_many(refs, rank, lo, hi, None, None))
    if not parts:
        return pa.table({"step": pa.array([], pa.int64())})
    return reader._join(kind.name, parts)
