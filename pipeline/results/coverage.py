"""Coverage simulation: how often does the report's 95 % interval cover the true difference, on sweeps shaped
like the grids in ``sweeps/``?

Synthetic paired sweeps with a known answer.  A sweep has ``directions`` host directions (1 or 2) x ``datasets``
(1 or 2) strata and ``seeds`` seeds; the directions of one dataset score the *same* eval examples, datasets
different ones; one run pair (conditions a and b) per stratum and seed.  Correctness is a probit model: in
stratum h = (direction, dataset g), run (seed s, condition c) gets example i right when

    mu_c + [c = a] (off_h + e_gi + f_hi) + u_gi + v_shc + eps_shci > 0,

u_gi ~ N(0, example_sd^2) the example's difficulty (shared by every run on dataset g), e_gi + f_hi how much more
condition a helps on this example (e shared by the directions, f ~ N(0, direction_share x interaction_sd^2) a
direction x example interaction; e and f together have variance interaction_sd^2 and are shared by all seeds),
off_h a fixed effect of the stratum on a (the study's design: directions differ), eps ~ N(0, 1) the rest, and
v_shc the seed's effect on a run, of SD seed_sd, whose *kind* is the cell's:

* ``independent`` -- a seed's effects in different strata are independent;
* ``half``        -- half the variance shared: v_shc = sqrt(.5) w_sc + sqrt(.5) z_shc;
* ``shared``      -- the same effect in every stratum (v_shc = w_sc: seed s fixes init, batch order and sampling
  noise everywhere, and they matter alike);
* ``t3``          -- shared, heavy-tailed: w_sc from a t distribution with 3 degrees of freedom scaled to seed_sd;
* ``collapsed``   -- half shared, and each seed's module learned nothing with probability 1/3 (``COLLAPSE``), in
  every stratum: its a-runs behave like b-runs (no mu_a, no interaction).  One seed in three on average; a part
  of the seed distribution, so the truth is the mixture (1 - 1/3) x difference + 1/3 x 0.  (Exactly one collapse
  per sweep would make the truth depend on the design and the interval over-cover by construction.)

The true difference is the pair-weighted mean over strata of the accuracy difference expected over new examples
and new seeds: ``E Phi((mu_a + off_h + v) / sqrt(1 + example_sd^2 + interaction_sd^2)) - E Phi((mu_b + v) /
sqrt(1 + example_sd^2))`` over v's distribution (closed form for normal v, quadrature for t3).

**Calibration** (``calibrate``; ``python -m benches.calibrate_coverage SWEEP``): a sweep's stage-2 runs give, for
every comparison of its three contrasts with >= 2 seeds in one stratum (technique x regime x host direction x
dataset), five moments -- both accuracies, the SD over seeds of a run pair's mean difference, the example-level
variance of the difference (the crossed ANOVA's ``(MS_example - MS_residual) / seeds``) and the residual mean
square; their medians over comparisons are matched by the model's: the accuracies in closed form, the three SDs by
simulation with common random numbers.  ``SETTINGS["demo"]`` holds the
result (the numbers and the runs they came from are in its ``what``); ``SETTINGS["seed"]`` triples its seed
effect.  ``benches/bench_coverage.py`` runs every cell of ``CELLS`` (figures 7 in BENCHMARKS.md) and writes
``coverage_cells.json``, from which the report marks intervals whose shape falls in a cell that misses.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import numpy as np

KINDS = ("independent", "half", "shared", "t3", "collapsed")
SHARE = {"independent": 0.0, "half": 0.5, "shared": 1.0, "t3": 1.0, "collapsed": 0.5}
OFFSETS = (0.0, 0.12, -0.08, 0.05)  # fixed effects of up to 4 strata on condition a (directions differ by design)
COLLAPSE = 1 / 3  # probability that a seed's module learned nothing, in the "collapsed" cells
STRATA = {1: (1, 1), 2: (2, 1), 4: (2, 2)}  # strata -> (directions sharing examples, datasets)


@dataclass(frozen=True)
class Setting:
    name: str
    mu_a: float
    mu_b: float
    example_sd: float = 1.6
    interaction_sd: float = 0.6
    seed_sd: float = 0.06
    direction_share: float = 0.5  # share of the interaction variance that is direction x example
    what: str = ""

    def truth(self, strata: int = 1, kind: str = "shared", seeds: int = 3) -> float:
        """The pair-weighted mean over strata of the expected accuracy difference (see the module docstring)."""
        diffs = [self._ev(self.mu_a + OFFSETS[h], math.sqrt(1 + self.example_sd ** 2 + self.interaction_sd ** 2), kind)
                 - self._ev(self.mu_b, math.sqrt(1 + self.example_sd ** 2), kind) for h in range(strata)]
        d = float(np.mean(diffs))
        return d * (1 - COLLAPSE) if kind == "collapsed" else d

    def _ev(self, mu: float, scale: float, kind: str) -> float:
        """E Phi((mu + v) / scale) over the seed effect v."""
        from scipy import integrate, stats

        if kind != "t3":
            return float(stats.norm.cdf(mu / math.sqrt(scale ** 2 + self.seed_sd ** 2)))
        s = self.seed_sd / math.sqrt(3)  # t3 has variance 3
        f = lambda x: stats.norm.cdf((mu + s * x) / scale) * stats.t.pdf(x, 3)  # noqa: E731
        return float(integrate.quad(f, -np.inf, np.inf, limit=200)[0])


SETTINGS = {s.name: s for s in (
    # `python -m benches.calibrate_coverage runs/demo` on the demo's Compacter runs (3 seeds; ported vs scratch,
    # sampled and no-module at zero-shot and after 10 steps; 5 comparisons, scratch and no-module coincide at
    # zero-shot): median moments acc_a 0.745, acc_b 0.629, seed SD of a pair's difference 0.0214, example-level
    # variance 0.142, residual mean square 0.146, each matched by the model within 0.001
    Setting("demo", 2.378, 0.747, example_sd=2.041, interaction_sd=2.810, seed_sd=0.0750,
            what="calibrated to the demo's runs (accuracies 0.745 vs 0.629; a run pair's difference varies from "
                 "seed to seed with SD 0.021; moments matched by benches/calibrate_coverage.py)"),
)}


def with_seed_x3(s: Setting) -> Setting:
    return replace(s, name="seed", seed_sd=3 * s.seed_sd, what=f"the demo setting with its seed effect x3 "
                                                              f"(seed_sd {3 * s.seed_sd:.3f}: a pair's difference "
                                                              f"varies from seed to seed with SD about 0.05)")


SETTINGS["seed"] = with_seed_x3(SETTINGS["demo"])


@dataclass(frozen=True)
class Cell:
    strata: int  # 1, 2 (two directions on one dataset) or 4 (two directions x two datasets)
    seeds: int
    kind: str  # one of KINDS

    @property
    def name(self) -> str:
        return f"{self.strata} strata, {self.seeds} seeds, {self.kind}"


CELLS = tuple(Cell(h, s, k) for h in (1, 2, 4) for s in (2, 3, 5) for k in KINDS
              if not (h == 1 and k in ("half", "independent")))  # one stratum: sharing means nothing


def _seed_effects(rng, reps: int, seeds: int, strata: int, kind: str, sd: float) -> np.ndarray:
    """(reps, seeds, strata, 2) seed effects of the cell's kind."""
    rho = SHARE[kind]
    if kind == "t3":
        w = rng.standard_t(3, (reps, seeds, 1, 2)) * sd / math.sqrt(3)
        return np.broadcast_to(w, (reps, seeds, strata, 2)).copy()
    w = rng.normal(0, sd, (reps, seeds, 1, 2))
    z = rng.normal(0, sd, (reps, seeds, strata, 2))
    return math.sqrt(rho) * w + math.sqrt(1 - rho) * z


def sweeps(setting: Setting, cell: Cell, reps: int, examples: int = 500, rng=None):
    """``reps`` synthetic sweeps of ``cell``: boolean arrays (reps, seeds, strata, examples) for a and b."""
    rng = np.random.default_rng(rng)
    dirs, sets = STRATA[cell.strata]
    s, h, m = cell.seeds, cell.strata, examples
    u = rng.normal(0, setting.example_sd, (reps, 1, sets, 1, m))
    q = setting.direction_share
    e = rng.normal(0, setting.interaction_sd * math.sqrt(1 - q), (reps, 1, sets, 1, m))
    f = rng.normal(0, setting.interaction_sd * math.sqrt(q), (reps, 1, sets, dirs, m))
    u = np.broadcast_to(u, (reps, 1, sets, dirs, m)).reshape(reps, 1, h, m)
    inter = (e + f).reshape(reps, 1, h, m)
    off = np.asarray(OFFSETS[:h])[None, None, :, None]
    v = _seed_effects(rng, reps, s, h, cell.kind, setting.seed_sd)
    lift = setting.mu_a + off + inter
    if cell.kind == "collapsed":
        lift = np.broadcast_to(lift, (reps, s, h, m)).copy()
        dead = rng.random((reps, s)) < COLLAPSE  # these seeds' modules learned nothing: a-runs behave like b-runs
        lift[dead] = setting.mu_b
    ya = lift + u + v[..., 0:1] + rng.standard_normal((reps, s, h, m)) > 0
    yb = setting.mu_b + u + v[..., 1:2] + rng.standard_normal((reps, s, h, m)) > 0
    return ya, yb


def units_of(ya: np.ndarray, yb: np.ndarray, cell: Cell) -> list[tuple]:
    """One sweep's run pairs as :func:`pipeline.results.intervals.two_level` takes them."""
    dirs, _ = STRATA[cell.strata]
    ids = np.arange(ya.shape[-1])
    return [((h,), s, h // dirs, ids, ya[s, h], yb[s, h]) for s in range(ya.shape[0]) for h in range(ya.shape[1])]


def coverage(setting: Setting, cell: Cell, reps: int, method=None, examples: int = 500, seed: int = 0,
             chunk: int = 100) -> dict:
    """Share of ``reps`` sweeps of ``cell`` whose 95 % interval covers the truth, with its Monte-Carlo standard error,
    the median interval width and the share with no interval.  ``method``: a function of a sweep's units returning
    ``ci_low``/``ci_high`` (default: the report's :func:`pipeline.results.intervals.two_level`)."""
    from . import intervals

    method = method or (lambda units: intervals.two_level(units, with_p=False))
    truth = setting.truth(cell.strata, cell.kind, cell.seeds)
    hits, widths, none = 0, [], 0
    rng = np.random.default_rng([seed, cell.seeds, cell.strata, zlib.crc32(f"{setting.name}|{cell.kind}".encode())])
    done = 0
    while done < reps:
        k = min(chunk, reps - done)
        ya, yb = sweeps(setting, cell, k, examples, rng)
        for r in range(k):
            res = method(units_of(ya[r], yb[r], cell))
            lo, hi = res["ci_low"], res["ci_high"]
            if math.isnan(lo):
                none += 1
                continue
            hits += lo <= truth <= hi
            widths.append(hi - lo)
        done += k
    cov = hits / reps
    return {"setting": setting.name, "strata": cell.strata, "seeds": cell.seeds, "kind": cell.kind, "reps": reps,
            "truth": truth, "coverage": cov, "mc_se": math.sqrt(max(cov * (1 - cov), 1e-12) / reps),
            "median_width": float(np.median(widths)) if widths else math.nan, "no_interval": none / reps}


# --------------------------------------------------------------------------------------------------
# calibration on a sweep's own runs
# --------------------------------------------------------------------------------------------------
MOMENTS = ("acc_a", "acc_b", "seed_sd_pair", "example_var", "ms_res")


def moments(d_a: np.ndarray, d_b: np.ndarray) -> dict:
    """The five moments of one comparison in one stratum: ``d_a``, ``d_b`` 0/1 arrays (seeds, examples)."""
    a, b = np.asarray(d_a, float), np.asarray(d_b, float)
    d = a - b
    k, m = d.shape
    rm, cm, g = d.mean(1), d.mean(0), d.mean()
    ms_r = float(((d - rm[:, None] - cm[None, :] + g) ** 2).sum() / ((k - 1) * (m - 1)))
    ms_e = float(k * ((cm - g) ** 2).sum() / (m - 1))
    return {"acc_a": float(a.mean()), "acc_b": float(b.mean()), "seed_sd_pair": float(rm.std(ddof=1)),
            "example_var": (ms_e - ms_r) / k, "ms_res": ms_r}


def observed_moments(df, preds, contrasts) -> list[dict]:
    """Moments of every comparison (technique x regime x contrast x stratum) of a sweep's done stage-2 runs with
    >= 2 seeds: ``df`` the runs, ``preds`` a :class:`pipeline.results.stats.Predictions`."""
    from . import stats

    out = []
    keys = list(stats.PAIR_KEYS)
    for a, b in contrasts:
        m = stats.matched_runs(df, a, b, keys)
        for key, g in m.groupby([k for k in keys if k != "seed"], sort=True):
            got = [preds.paired_ids(ra, rb) for ra, rb in zip(g["run_a"], g["run_b"])]
            got = [x for x in got if x is not None and len(x[0])]
            if len(got) < 2 or any(not np.array_equal(x[0], got[0][0]) for x in got):
                continue
            mo = moments(np.stack([x[1] for x in got]), np.stack([x[2] for x in got]))
            out.append({"contrast": f"{a} - {b}", **dict(zip([k for k in keys if k != "seed"], key)),
                        "seeds": len(got), "examples": len(got[0][0]), **mo})
    return out


def calibrate(target: dict, seeds: int = 3, examples: int = 500, sims: int = 80, rng: int = 0) -> Setting:
    """The probit setting whose moments (one stratum, ``seeds`` seeds) match ``target`` (the five ``MOMENTS``).
    The accuracies are matched in closed form (mu = Phi^-1(acc) x the latent SD), the three SDs by simulation with
    common random numbers (Nelder-Mead on log SDs, squared relative errors of the other three moments)."""
    from scipy import optimize, stats

    r = np.random.default_rng(rng)
    z = {"u": r.standard_normal((sims, 1, examples)), "e": r.standard_normal((sims, 1, examples)),
         "v": r.standard_normal((sims, seeds, 2, 1)), "ea": r.standard_normal((sims, seeds, examples)),
         "eb": r.standard_normal((sims, seeds, examples))}
    qa, qb = stats.norm.ppf(target["acc_a"]), stats.norm.ppf(target["acc_b"])

    def setting(x) -> Setting:
        ex_sd, in_sd, sd = (float(v) for v in np.exp(x))
        return Setting("demo", float(qa * math.sqrt(1 + ex_sd ** 2 + in_sd ** 2 + sd ** 2)),
                       float(qb * math.sqrt(1 + ex_sd ** 2 + sd ** 2)), ex_sd, in_sd, sd)

    def model(x):
        st = setting(x)
        ya = st.mu_a + st.example_sd * z["u"] + st.interaction_sd * z["e"] + st.seed_sd * z["v"][:, :, 0] + z["ea"] > 0
        yb = st.mu_b + st.example_sd * z["u"] + st.seed_sd * z["v"][:, :, 1] + z["eb"] > 0
        ms = [moments(ya[i], yb[i]) for i in range(sims)]
        return {k: float(np.mean([mm[k] for mm in ms])) for k in MOMENTS}

    # the seed SD moves the seed moment alone (nearly): alternate a 2-D fit of the example-level SDs to example_var
    # and ms_res with a 1-D root of the seed SD on seed_sd_pair (0 where the target lies below the no-seed floor)
    x = np.array([math.log(1.6), math.log(0.6), math.log(0.05)])
    for _ in range(3):
        def loss(y, sd=x[2]):
            got = model(np.r_[y, sd])
            return sum(((got[k] - target[k]) / max(abs(target[k]), 1e-4)) ** 2 for k in ("example_var", "ms_res"))

        x[:2] = optimize.minimize(loss, x[:2], method="Nelder-Mead", options={"maxiter": 300, "xatol": 1e-3}).x

        def gap(sd):
            return model(np.r_[x[:2], math.log(max(sd, 1e-9))])["seed_sd_pair"] - target["seed_sd_pair"]

        x[2] = math.log(optimize.brentq(gap, 1e-9, 3.0, xtol=1e-4) if gap(1e-9) < 0 < gap(3.0) else 1e-9)
    st, fit = setting(x), model(x)
    what = ("calibrated to the demo's runs (median moments over their comparisons): "
            + ", ".join(f"{k} {target[k]:.4g} (model {fit[k]:.4g})" for k in MOMENTS))
    return replace(st, what=what)
