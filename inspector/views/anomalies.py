"""The anomaly feed: what a person should look at, newest first."""
from __future__ import annotations

import pandas as pd

from inspector.views.live import LiveRun

ANOMALY_COLUMNS = ["step", "rank", "kind", "module", "severity", "message", "value"]


def anomaly_list(run: LiveRun, *, limit: int = 500) -> pd.DataFrame:
    """At most `limit` anomalies, newest step first (columns `ANOMALY_COLUMNS`)."""
    df = run.frame("anomaly")
    if df.empty:
        return pd.DataFrame(columns=ANOMALY_COLUMNS)
    out = df.sort_values(["step", "rank"], ascending=[False, True], kind="stable").head(limit)
    return out[ANOMALY_COLUMNS].reset_index(drop=True)
