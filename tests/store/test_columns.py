"""Building record batches from submitted chunks: rows submitted one at a time with plain values
(Arrow builds the columns in one call) give exactly what the general per-column path gives, with
nulls, NaN, ints in float columns and dictionary strings; values Arrow will not take as they are
still go the general way (cast, or a clear error)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from inspector.store.columns import build_batch

SCHEMA = pa.schema([("step", pa.int64()), ("ms", pa.float64()), ("batch", pa.int32()),
                    ("name", pa.dictionary(pa.int32(), pa.string())), ("reason", pa.string()),
                    ("ok", pa.bool_()), ("usage", pa.float64())])


def rows(n: int) -> list[dict]:
    return [{"step": i, "ms": 1.5 * i if i % 3 else float("nan"), "batch": 8, "name": f"n{i % 2}",
             "reason": None if i % 4 == 0 else "stop", "ok": bool(i % 2), **({"usage": 0.25 * i} if i % 5 else {})}
            for i in range(n)]


def general(chunks: list[tuple[dict, int]]) -> pa.RecordBatch:
    """The same rows through the general path: one chunk holding every row as per-row sequences."""
    cols = {name: [c.get(name) for c, _ in chunks] for name in SCHEMA.names}
    return build_batch(SCHEMA, [(cols, len(chunks))])


def test_one_row_chunks_equal_the_general_path() -> None:
    chunks = [(r, 1) for r in rows(40)]
    fast, slow = build_batch(SCHEMA, chunks), general(chunks)
    assert fast.schema == slow.schema == SCHEMA
    for name in SCHEMA.names:
        a, b = fast.column(name).to_pylist(), slow.column(name).to_pylist()
        assert len(a) == 40
        assert all((x is None and y is None) or x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
                   for x, y in zip(a, b)), name
    assert fast.column("usage").null_count == 8 and math.isnan(fast.column("ms")[0].as_py())


def test_values_arrow_will_not_take_as_they_are_go_the_general_way() -> None:
    chunks = [({"step": 1.0, "ms": 2}, 1), ({"step": 2, "ms": 3.5}, 1)]      # a whole float for an int column
    batch = build_batch(SCHEMA, chunks)
    assert batch.column("step").to_pylist() == [1, 2] and batch.column("ms").to_pylist() == [2.0, 3.5]
    with pytest.raises((pa.ArrowException, TypeError, ValueError)):
        build_batch(SCHEMA, [({"ms": "slow"}, 1)])
    with pytest.raises(ValueError, match="unknown column"):
        build_batch(SCHEMA, [({"nope": 1}, 1)])


def test_mixed_chunks_keep_row_order() -> None:
    chunks = [({"step": 0, "ms": 1.0}, 1), ({"step": np.array([1, 2]), "ms": np.array([2.0, 3.0])}, 2),
              ({"step": 3, "ms": None}, 1)]
    batch = build_batch(SCHEMA, chunks)
    assert batch.column("step").to_pylist() == [0, 1, 2, 3]
    assert batch.column("ms").to_pylist() == [1.0, 2.0, 3.0, None]
