"""Retention against host distance: the table joins retention with each receiving host's recorded distance."""

import pandas as pd

from pipeline.results.drift import drift_table, fig_drift
from pipeline.results.tables import RETENTION_COLS


def _retention():
    rows = []
    for host, ret in (("h0", 1.0), ("h30", 0.95), ("h300", 0.7)):
        rows.append(["lora", f"o->{host}", "ported", 3, 0.78, 0.78 * ret, ret, ret - 0.02, ret + 0.01, "a;b;c"])
        rows.append(["lora", f"o->{host}", "head-only", 3, 0.78, 0.6, 0.77, 0.75, 0.8, "d;e;f"])
    rows.append(["lora", "o->unmeasured", "ported", 3, 0.78, 0.5, 0.64, 0.6, 0.7, "g"])
    return pd.DataFrame(rows, columns=RETENTION_COLS)


def _hosts():
    h = {name: {"build_info": {"distance": {"linear_cka": cka, "mean_pooled_cosine": cka, "relative_weight_change": 1 - cka}}}
         for name, cka in (("h0", 1.0), ("h30", 0.97), ("h300", 0.8))}
    h["unmeasured"] = {"build_info": None}
    return h


def test_drift_table_pairs_retention_with_distance(tmp_path):
    t = drift_table(_retention(), _hosts())
    assert set(t["receiving_host"]) == {"h0", "h30", "h300"}  # the host without a distance is left out
    ported = t[t["condition"] == "ported"].set_index("receiving_host")
    assert ported.loc["h300", "linear_cka"] == 0.8 and ported.loc["h300", "retention_mean"] == 0.7
    assert fig_drift(t, tmp_path / "drift.png").stat().st_size > 1000


def test_no_figure_with_fewer_than_two_measured_hosts(tmp_path):
    t = drift_table(_retention()[lambda r: r["host_pair"] == "o->h0"], _hosts())
    assert len(t) == 2 and fig_drift(t, tmp_path / "drift.png") is None
    assert drift_table(_retention(), None).empty
