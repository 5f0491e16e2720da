"""The report's first screen: the finding sentences (pipeline.results.prose.findings) and the forest plot of every
comparison (figures.draw_forest), on comparison tables made by hand so each wording is pinned to its numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from test_report import EFFECT, make_sweep

from pipeline.results import figures, prose, report

TECHS = ("lora", "prefix")
CONTROLS = ("scratch", "sampled", "no-module")


def comparisons(diff, ci=0.02, p_holm=0.01, regimes=(0, 10), **extra) -> pd.DataFrame:
    """A pooled comparison table: ``diff(b, technique, regime)`` -> mean difference, interval ± ``ci``."""
    rows = []
    for reg in regimes:
        for b in CONTROLS if reg == 0 else CONTROLS[:2]:
            for t in TECHS:
                d = diff(b, t, reg)
                rows.append({"contrast": f"ported - {b}", "a": "ported", "b": b, "technique": t, "regime": float(reg),
                             "n": 3, "mean_diff": d, "ci_low": d - ci, "ci_high": d + ci, "p": p_holm / 10,
                             "p_holm": p_holm, "seed_df": 2, "few_seeds": False, "few_units": False,
                             "no_variation": False, "method": "two-level t", **extra})
    return pd.DataFrame(rows)


def learned(ok=(3, 3), majority=0.578) -> pd.DataFrame:
    return pd.DataFrame([{"technique": t, "origin_host": "a", "dataset": "rt", "runs": 3, "accuracy": acc,
                          "majority_acc": majority, "learned": k, "majority_not_recorded": 0,
                          "verdict": f"learned ({k}/3)" if k == 3 else f"at the majority level ({3 - k}/3); learned ({k}/3)"}
                         for t, acc, k in zip(TECHS, (0.752, 0.744), ok)])


def retention(values=(0.994, 0.997)) -> pd.DataFrame:
    return pd.DataFrame([{"technique": t, "host_pair": "a->b", "condition": c, "n": 3, "retention_mean": v if c ==
                          "ported" else 0.84} for t, v in zip(TECHS, values) for c in ("ported", "no-module")])


def test_the_three_findings_carry_the_tables_numbers():
    comp = comparisons(lambda b, t, reg: (0.15 if b == "sampled" else 0.12) if reg == 0 else 0.05)
    one, zero, later = prose.findings(comp, learned(), retention(), "accuracy")
    assert one == ("**The modules learned the task on their origin host**: every origin run beats always predicting the "
                   "majority class (0.578) by at least 0.02; mean accuracy 0.744 (prefix) to 0.752 (lora).")
    assert zero == ("**At zero-shot, ported modules keep 99.6 % of their origin accuracy on the receiving host (0.994 to "
                    "0.997 by technique) and beat every control (scratch, sampled and no-module) for every technique**: "
                    "accuracy differences +0.120 to +0.150; every 95% interval excludes 0, all 6 survive Holm.")
    assert later == ("**With further training the ported modules stay ahead of every control**: accuracy differences "
                     "after 10 steps +0.050 (every 95% interval excludes 0, all 4 survive Holm); on average the lead "
                     "shrinks from +0.135 at zero-shot to +0.050.")


def test_a_percentage_that_would_round_to_100_keeps_a_decimal():
    assert prose._pct(0.994) == "99 %" and prose._pct(0.9957) == "99.6 %" and prose._pct(1.0) == "100 %"
    assert prose._pct(0.0004) == "0 %" and prose._pct(0.004) == "0.4 %" and prose._pct(0.5) == "50 %"


def test_mixed_and_losing_leads_are_said_as_such():
    mixed = comparisons(lambda b, t, reg: 0.1 if t == "lora" else -0.03, p_holm=0.2)
    zero, later = prose.findings(mixed, None, None, "accuracy")
    assert zero.startswith("**At zero-shot, ported modules beat the controls (scratch, sampled and no-module) in 3 of 6 "
                           "technique × control comparisons**: accuracy differences -0.030 to +0.100; every 95% "
                           "interval excludes 0, none survives Holm.")
    assert later.startswith("**With further training the ported modules' lead is mixed**")
    losing = comparisons(lambda b, t, reg: -0.04, ci=0.05, p_holm=1.0)
    zero, later = prose.findings(losing, None, None, "accuracy")
    assert "do not beat the controls (scratch, sampled and no-module) for any technique" in zero
    assert "0 of 6 95% intervals exclude 0, none survives Holm" in zero
    assert later.startswith("**With further training the ported modules fall behind the controls**")


def test_an_origin_that_did_not_learn_is_named_first():
    one = prose.findings(comparisons(lambda *a: 0.1), learned(ok=(3, 1)), None, "accuracy")[0]
    assert one.startswith("**Not every origin module learned the task**: in 1 of 2 technique × origin host × dataset "
                          "cells some run is not 0.02 above the majority class (0.578) (prefix on a, rt: at the majority "
                          "level (2/3); learned (1/3))")


def test_no_comparison_gives_only_the_origin_finding():
    empty = comparisons(lambda *a: math.nan)
    assert prose.findings(empty, learned(), None, "accuracy")[0].startswith("**The modules learned")
    assert len(prose.findings(empty, learned(), None, "accuracy")) == 1
    assert prose.findings(empty.iloc[:0], None, None, "accuracy") == []


def test_shape_miss_is_marked_beside_the_interval_and_in_the_plot():
    comp = comparisons(lambda *a: 0.1, shape_miss=False)
    comp.loc[0, "shape_miss"] = True
    assert prose.ci_text(comp.iloc[0]).endswith(f"] {prose.MISS_MARK}") and prose.MISS_MARK not in prose.ci_text(comp.iloc[1])
    assert prose.MISS_MARK not in prose.ci_text(comparisons(lambda *a: 0.1).iloc[0])  # no column: no mark
    fig = figures.draw_forest(comp, "accuracy")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum(t.endswith(prose.MISS_MARK) for t in texts) == 1 and len(texts) == len(comp)
    assert "interval shape known to miss" in fig._suptitle.get_text()


def test_the_forest_plot_has_a_row_per_comparison_with_its_interval():
    comp = comparisons(lambda b, t, reg: 0.1 + 0.01 * TECHS.index(t) - 0.05 * (reg > 0), p_holm=0.01)
    comp.loc[comp["technique"] == "prefix", "p_holm"] = 0.3
    fig = figures.draw_forest(comp, "accuracy")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"ported − {b}" for b in CONTROLS]
    labels = [t.get_text() for t in panels[0].get_yticklabels()]
    assert labels == ["lora, zero-shot", "prefix, zero-shot", "lora, 10 steps", "prefix, 10 steps"]
    scratch = panels[0]
    lines = [ln for ln in scratch.get_lines() if len(ln.get_xdata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1]
             and float(ln.get_ydata()[0]).is_integer()]  # not the rule between budgets (at 1.5)
    spans = [x for ln in sorted(lines, key=lambda ln: ln.get_ydata()[0]) for x in (ln.get_ydata()[0], *ln.get_xdata())]
    want = comp[comp["b"] == "scratch"]
    assert spans == pytest.approx([x for i, (lo, hi) in enumerate(zip(want["ci_low"], want["ci_high"])) for x in (i, lo, hi)])
    dots = [ln for ln in scratch.get_lines() if len(ln.get_xdata()) == 1]
    filled = [ln.get_markerfacecolor() != "white" for ln in dots]
    assert filled == [True, False, True, False]  # Holm survivors filled, the others hollow
    assert figures.draw_forest(comp.iloc[:0], "accuracy") is None


def test_the_report_puts_findings_and_forest_plot_first(tmp_path):
    root = tmp_path / "s"
    make_sweep(root, conditions=("ported", "scratch", "sampled", "no-module"), preds="merged", new_columns=True)
    r = report.build(root, tmp_path / "rep")
    md = r.markdown.read_text()
    first = md[:md.index("## Summary of the contrasts")]
    assert first.index("## What was found") < first.index("- **The modules learned") < first.index("(figures/forest.png)")
    assert first.count("\n- **") == 3 and "## " not in first.split("## What was found")[1]
    pooled = pd.read_csv(r.out / "tables" / "stats_pooled.csv")
    zs = pooled[pooled["regime"] == 0]
    assert f"accuracy differences {zs['mean_diff'].min():+.3f} to {zs['mean_diff'].max():+.3f}" in first
    assert abs(zs["mean_diff"].median() - EFFECT) < 0.05
    figs = md[md.index("## Figures"):]
    assert "forest.png" not in figs  # shown once, on the first screen
