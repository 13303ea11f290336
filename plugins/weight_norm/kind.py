"""The `weight_norm` record kind: one row per block per sampled step."""
from __future__ import annotations

import pyarrow as pa

from inspector.schema import KindSpec

WEIGHT_NORM = KindSpec(
    "weight_norm", 1,
    (pa.field("name", pa.dictionary(pa.int32(), pa.string())), pa.field("norm", pa.float64()),
     pa.field("rms", pa.float64())),
    description="L2 norm and RMS of all parameters of one block (plugin: weight_norm)")
