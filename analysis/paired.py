"""Paired statistics of ablation rungs, the seed / class-order variance split, and ``lucir report --compare``.

Rungs (presets) of one experiment run with the same training seeds and class orders, so they are compared
*per seed*: for every preset, the difference of its last-phase metric (``avg_inc_acc_cnn``, NME) to a
reference rung (default ``lucir``) over the ``(seed, class_order_seed)`` pairs both have. Only finished
trials count, and only within one protocol (dataset, base classes, phases, exemplar budget) and the same
other non-preset configuration (a hyperparameter a grid varied keeps its trials apart).

Per preset the table gives ``n`` (pairs), the mean difference, the sample std of the differences, a 95%
t-interval (``mean ± t_{0.975, n-1} · sd / sqrt(n)``, ``scipy.stats.t``) and a two-sided sign-flip
(permutation) p-value: under H0 (no difference) each paired difference is as likely negative as positive,
so the statistic ``|sum(d)|`` is compared with ``|sum(s · d)|`` over sign vectors ``s``; with
``n <= 16`` all ``2^n`` vectors are enumerated (the exact p = share with ``|sum(s·d)| >= |sum(d)|``, the
identity included), else 20,000 seeded Monte-Carlo flips give ``p = (1 + hits) / (1 + 20,000)``.
Fewer than 3 pairs are refused (no interval, no p-value): with 1 or 2 pairs a t-interval is
(nearly) unbounded, the smallest sign-flip p is 0.5, and a bootstrap has at most 4 distinct resamples;
none of them says anything.

``variance_split``: when both the training seed and the class order vary within a protocol x preset,
its metric's variance is split in two (a simple two-way decomposition, one value per finished trial):

* ``var_order``  = variance (ddof=1) of the class-order means ``m_o`` (the mean over seeds of order o);
* ``var_seed``   = mean over orders of the within-order variance (ddof=1) over seeds (orders with
  >= 2 seeds);
* ``var_order_adj`` = ``max(0, var_order - var_seed / n_h)``, ``n_h`` the harmonic mean of the seeds per
  order: the method-of-moments estimate of the class-order component (the order means carry
  ``var_seed / n`` of seed noise; one-way random-effects ANOVA);
* ``order_share`` = ``var_order_adj / (var_order_adj + var_seed)``.

``compare_table`` / ``run_compare`` (``lucir report --compare A B``) put two experiments side by side.
"""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.results import CONFIG_FIELDS, PROTOCOL, ExperimentError, last_phase

#: the metrics compared (last phase): average incremental accuracy, CNN and NME
METRICS = ("avg_inc_acc_cnn", "avg_inc_acc_nme")
#: what makes two trials of different rungs a pair
PAIR_KEYS = ("seed", "class_order_seed")
MIN_PAIRS = 3
EXACT_MAX_N = 16
MC_FLIPS = 20_000
MC_SEED = 0
CONFIDENCE = 0.95
DEFAULT_REFERENCE = "lucir"
_LABEL_COLS = ("dataset", "base_classes", "phases", "memory")


def refused_note(n: int) -> str:
    """The note of a comparison with fewer than ``MIN_PAIRS`` pairs."""
    return (f"refused: n={n} < {MIN_PAIRS} pairs, no interval or p-value (a t-interval, a sign-flip test "
            f"or a bootstrap on fewer than {MIN_PAIRS} pairs is meaningless)")


# --------------------------------------------------------------------------- statistics (scipy.stats)
ALPHA = 0.05


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of ``values`` (paired differences): ``scipy.stats.ttest_1samp(values, 0)``'s
    confidence interval, ``mean ± t_{(1+c)/2, n-1} · sd / sqrt(n)`` (sd with ddof=1)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    if sd == 0:
        return mean, sd, mean, mean
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
    return mean, sd, float(ci.low), float(ci.high)


def t_test_p(values: Sequence[float]) -> float:
    """Two-sided paired t-test p of differences (``scipy.stats.ttest_1samp(d, 0)``, the same as
    ``ttest_rel(a, b)``); NaN for n < 2 or no spread with a zero mean, 0 for no spread and a non-zero mean."""
    from scipy import stats

    d = np.asarray(values, dtype=float)
    if len(d) < 2:
        return math.nan
    if float(d.std(ddof=1)) == 0:
        return math.nan if float(d.mean()) == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def min_sign_flip_p(n: int) -> float:
    """The smallest two-sided p an exact sign-flip test of ``n`` pairs can give: 2 / 2^n (0.25 at n = 3)."""
    return 2.0 / 2 ** n if n > 0 else math.nan


def seeds_for_sign_flip(m: int = 1, alpha: float = ALPHA) -> int:
    """Pairs needed before an exact sign-flip test can reach p < ``alpha`` after a Holm correction over ``m``
    comparisons (its first threshold is alpha / m): the smallest n with 2 / 2^n < alpha / m (6 for m = 1)."""
    n = 1
    while min_sign_flip_p(n) >= alpha / max(1, m):
        n += 1
    return n


def seeds_for_t(mean: float, sd: float, m: int = 1, alpha: float = ALPHA, cap: int = 1000) -> float:
    """Pairs at which the observed effect (mean and sd of the differences) would give a paired t-test
    p < alpha / m: the smallest n >= 2 with |mean| / (sd / sqrt n) > t_{1 - alpha/(2m), n-1}; NaN when the
    mean is 0 or unknown, ``inf`` beyond ``cap``. A planning number, not a power analysis."""
    from scipy import stats

    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (mean, sd)) or mean == 0:
        return math.nan
    if sd == 0:
        return 2.0
    q = 1 - alpha / (2 * max(1, m))
    for n in range(2, cap + 1):
        if abs(mean) / (sd / math.sqrt(n)) > stats.t.ppf(q, n - 1):
            return float(n)
    return math.inf


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (Holm 1979): the i-th smallest of m is ``max_{j<=i} min(1,
    (m - j + 1) p_(j))``; NaN stays NaN and is not counted in m. (scipy has Benjamini-Hochberg, no Holm.)"""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if not m:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out.tolist()


def sign_flip_p(diffs: Sequence[float], *, exact_max: int = EXACT_MAX_N, n_mc: int = MC_FLIPS,
                seed: int = MC_SEED) -> tuple[float, str]:
    """Two-sided sign-flip p-value of paired differences and how it was computed:
    ``scipy.stats.permutation_test((d,), mean, permutation_type='samples')`` (one sample: the signs are
    flipped), exact over all ``2^n`` sign vectors for ``n <= exact_max``, else ``n_mc`` seeded flips."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, "no pairs"
    if not np.any(d):
        return 1.0, f"exact ({2 ** n} sign flips)"
    exact = n <= exact_max
    kw = dict(permutation_type="samples", n_resamples=np.inf if exact else n_mc, alternative="two-sided",
              vectorized=True)
    try:
        res = stats.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), rng=np.random.default_rng(seed),
                                     **kw)
    except TypeError:  # scipy < 1.15 names the generator random_state
        res = stats.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), random_state=seed, **kw)
    how = f"exact ({2 ** n} sign flips)" if exact else f"Monte Carlo ({n_mc} sign flips, seed {seed})"
    return float(min(1.0, res.pvalue)), how


def paired_stats(diffs: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """n, mean / sd of the differences, the t-interval, the paired t-test p, the sign-flip p and the smallest
    p the sign-flip test can give at this n (refused for n < 3)."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    out = {"n": n, "mean_diff": mean, "sd_diff": sd, "ci_low": math.nan, "ci_high": math.nan,
           "p_value": math.nan, "p_min": min_sign_flip_p(n), "p_t": math.nan, "test": "", "note": ""}
    if n < MIN_PAIRS:
        out["note"] = refused_note(n)
        return out
    _, _, lo, hi = t_interval(d, confidence)
    p, how = sign_flip_p(d)
    out.update(ci_low=lo, ci_high=hi, p_value=p, p_t=t_test_p(d),
               test=f"paired t-interval and t-test; sign-flip p {how}")
    return out


def welch_stats(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Unpaired difference mean(b) - mean(a): ``scipy.stats.ttest_ind(b, a, equal_var=False)`` (Welch),
    its confidence interval and p (needs >= 2 values each)."""
    from scipy import stats

    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    na, nb = len(xa), len(xb)
    diff = float(xb.mean() - xa.mean()) if na and nb else math.nan
    out = {"n": min(na, nb), "mean_diff": diff, "sd_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "p_value": math.nan, "p_min": math.nan, "p_t": math.nan, "test": "", "note": ""}
    if na < 2 or nb < 2:
        out["note"] = (f"refused: Welch interval needs >= 2 finished seeds on each side (A has {na}, B has {nb})")
        return out
    if xa.var(ddof=1) == 0 and xb.var(ddof=1) == 0:
        out.update(ci_low=diff, ci_high=diff, test="Welch t-interval",
                   note="no spread on either side: the interval is a point, no p-value")
        return out
    res = stats.ttest_ind(xb, xa, equal_var=False)
    ci = res.confidence_interval(confidence)
    out.update(ci_low=float(ci.low), ci_high=float(ci.high), p_value=float(res.pvalue), p_t=float(res.pvalue),
               test=f"Welch t-interval (df={float(res.df):.1f}); Welch t-test p")
    return out


# --------------------------------------------------------------------------- grouping
def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(v)
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _memory(d: pd.DataFrame) -> pd.DataFrame:
    from analysis.tables import with_memory

    return with_memory(d)


def identity_fields(df: pd.DataFrame) -> list[str]:
    """Config columns that decide a result besides the protocol, the preset's switches, seed and class order."""
    from analysis.tables import _NOT_IDENTITY

    return [c for c in df.columns if c in CONFIG_FIELDS and c not in _NOT_IDENTITY and c not in PROTOCOL
            and c not in PAIR_KEYS]


def varied_fields(df: pd.DataFrame) -> list[str]:
    """Identity fields with more than one value inside one protocol (grid / search dimensions)."""
    proto = [c for c in PROTOCOL if c in df]
    out = []
    for c in identity_fields(df):
        vals = df[c].map(_hashable)
        n = (vals.groupby([df[p].map(_hashable) for p in proto], dropna=False).nunique(dropna=False).max()
             if proto else vals.nunique(dropna=False))
        if n > 1:
            out.append(c)
    return out


def _finished_last(df: pd.DataFrame) -> pd.DataFrame:
    last = _memory(last_phase(df))
    last = last[last["preset"].notna()].copy()
    for k in PAIR_KEYS:
        if k not in last:
            last[k] = pd.NA
    return last


def _group_keys(last: pd.DataFrame, vary: Sequence[str]) -> list[str]:
    return [c for c in PROTOCOL if c in last] + [c for c in vary if c in last]


def _key_cols(last: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({k: last[k].map(_hashable) for k in keys}, index=last.index)


def _per_pair(g: pd.DataFrame, metric: str) -> tuple[pd.Series, int]:
    """One value per (seed, class order) (duplicates, e.g. a retried trial, averaged) and the duplicate count."""
    keys = [g[k].map(_hashable) for k in PAIR_KEYS]
    s = g[metric].astype(float).groupby(keys, dropna=False).mean().dropna()
    return s, int(len(g) - g.groupby(keys, dropna=False).ngroups)


def _sort_preset(p: Any) -> tuple[int, str]:
    from analysis.tables import _sort_key_preset

    return _sort_key_preset(p)


def _label_row(row: dict[str, Any], keys: Sequence[str], memory: str) -> dict[str, Any]:
    out = {c: row[c] for c in ("dataset", "base_classes", "phases") if c in row}
    out["memory"] = memory
    out.update({k: row[k] for k in keys if k not in PROTOCOL})
    return out


# --------------------------------------------------------------------------- paired table
PAIRED_COLUMNS = ["preset", "reference", "metric", "n", "mean_diff", "sd_diff", "ci_low", "ci_high", "p_value",
                  "p_min", "p_holm", "p_t", "p_t_holm", "m", "seeds_sign_flip", "seeds_t", "test", "note"]
_STAT_KEYS = ("n", "mean_diff", "sd_diff", "ci_low", "ci_high", "p_value", "p_min", "p_t", "test")


def _groups(df: pd.DataFrame, metric, extra: tuple[str, ...] = ()):
    """What ``paired_table`` and ``variance_split`` group by: (metrics, group keys, lead columns, an iterator
    of (key tuple, last-phase rows of the finished trials of that group))."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    last = _finished_last(df)
    vary = varied_fields(last) if len(last) else []
    keys = _group_keys(last, vary) + list(extra)
    lead = list(_LABEL_COLS) + list(vary)

    def it():
        if not len(last):
            return
        kc = _key_cols(last, keys)
        for key, g in last.groupby([kc[k] for k in keys], dropna=False, sort=False):
            yield (key if isinstance(key, tuple) else (key,)), g

    return metrics, keys, lead, it()


def paired_table(df: pd.DataFrame, reference: str = DEFAULT_REFERENCE,
                 metric: str | Sequence[str] = "avg_inc_acc_cnn", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per protocol x preset (the reference left out), the paired difference preset - reference of the
    last-phase ``metric`` (one name or several: one row per metric) over the shared (seed, class order) pairs.

    Columns: dataset, base_classes, phases, memory, [varied config fields], preset, reference, metric, n,
    mean_diff, sd_diff, ci_low, ci_high, p_value, test, note (why an interval is missing; unpaired seeds).
    A frame with no reference trial in a protocol gives no row for it.
    """
    metrics, keys, lead, groups = _groups(df, metric)
    rows = []
    for key, g in groups:
        ref = g[g["preset"] == reference]
        if not len(ref):
            continue
        label = _label_row(dict(zip(keys, key)), keys, str(g["memory"].iloc[0]))
        presets = sorted((p for p in g["preset"].unique() if p != reference), key=_sort_preset)
        for m in metrics:
            r_vals, r_dup = _per_pair(ref, m)
            for p in presets:
                p_vals, p_dup = _per_pair(g[g["preset"] == p], m)
                common = p_vals.index.intersection(r_vals.index)
                diffs = (p_vals.loc[common] - r_vals.loc[common]).to_numpy(dtype=float)
                st = paired_stats(diffs, confidence)
                notes = [st["note"]] if st["note"] else []
                lone_p, lone_r = len(p_vals) - len(common), len(r_vals) - len(common)
                if lone_p or lone_r:
                    notes.append(f"unpaired, left out: {lone_p} {p} and {lone_r} {reference} (seed, class order)"
                                 " runs without a partner")
                if p_dup or r_dup:
                    notes.append(f"{p_dup + r_dup} repeated (seed, class order) runs averaged")
                rows.append({**label, "preset": p, "reference": reference, "metric": m, "_group": key,
                             **{k: st[k] for k in _STAT_KEYS}, "note": "; ".join(notes)})
    out = pd.DataFrame(rows, columns=lead + PAIRED_COLUMNS + ["_group"])
    out["n"] = out["n"].astype(int)
    out = with_corrections(out, ["_group", "metric"]).drop(columns="_group")
    return _sorted(out, lead)


def with_corrections(table: pd.DataFrame, family: Sequence[str], alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-corrected p values (``p_holm`` of the sign-flip p, ``p_t_holm`` of the t-test p) over each
    family of comparisons (the rows sharing ``family``: one protocol and metric), the family size ``m``, and
    the seeds needed for p < alpha after that correction: ``seeds_sign_flip`` (exact test; 6 for one
    comparison) and ``seeds_t`` (a t-test at the observed mean and sd of the differences)."""
    t = table.copy()
    for c in ("p_holm", "p_t_holm", "seeds_t"):
        t[c] = math.nan
    t["m"] = 0
    t["seeds_sign_flip"] = 0
    if not len(t):
        return t
    keys = [t[c].map(lambda v: tuple(v) if isinstance(v, (list, tuple)) else str(v)) for c in family]
    for _, idx in t.groupby(keys, sort=False, dropna=False).groups.items():
        idx = list(idx)
        m = len(idx)  # the comparisons of the family (a refused one would be tested once it has the pairs)
        t.loc[idx, "p_holm"] = holm(t.loc[idx, "p_value"].astype(float).tolist())
        t.loc[idx, "p_t_holm"] = holm(t.loc[idx, "p_t"].astype(float).tolist())
        t.loc[idx, "m"] = m
        t.loc[idx, "seeds_sign_flip"] = seeds_for_sign_flip(m, alpha)
        t.loc[idx, "seeds_t"] = [seeds_for_t(a, b, m, alpha) for a, b in
                                 zip(t.loc[idx, "mean_diff"], t.loc[idx, "sd_diff"])]
    t["m"] = t["m"].astype(int)
    t["seeds_sign_flip"] = t["seeds_sign_flip"].astype(int)
    return t


def _sorted(table: pd.DataFrame, lead: Sequence[str]) -> pd.DataFrame:
    """Rows by protocol (as text, so None / tuples sort too), then ladder order of the preset, then metric."""
    if not len(table):
        return table.reset_index(drop=True)
    t = table.copy()
    sort_cols = []
    for i, c in enumerate(lead):
        t[f"_k{i}"] = [(0, v, "") if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                       else (1, 0, str(v)) for v in t[c]]
        sort_cols.append(f"_k{i}")
    t["_p"] = t["preset"].map(_sort_preset)
    t["_m"] = t["metric"].map(lambda m: (METRICS.index(m) if m in METRICS else len(METRICS), str(m)))
    t = t.sort_values(sort_cols + ["_p", "_m"], kind="stable")
    return t.drop(columns=sort_cols + ["_p", "_m"]).reset_index(drop=True)


def _fmt(v: Any, digits: int = 2) -> str:
    from analysis.tables import DASH

    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return f"{v:+.{digits}f}" if digits else str(v)


def _fmt_p(p: Any) -> str:
    from analysis.tables import DASH

    if p is None or (isinstance(p, float) and math.isnan(p)):
        return DASH
    return f"{p:.4f}" if p >= 1e-4 else "< 0.0001"


def _fmt_ci(lo: Any, hi: Any) -> str:
    from analysis.tables import DASH

    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (lo, hi)):
        return DASH
    return f"[{lo:+.2f}, {hi:+.2f}]"


def _fmt_seeds(v: Any) -> str:
    from analysis.tables import DASH

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    return "> 1000" if v == math.inf else str(int(v))


METRIC_SHORT = {"avg_inc_acc_cnn": "CNN", "avg_inc_acc_nme": "NME"}


def format_paired(table: pd.DataFrame, compact: bool = False) -> pd.DataFrame:
    """Text cells for Markdown / LaTeX: method (short paper name), classifier, n, 'mean diff' '+1.23', '95% CI'
    '[+0.50, +1.96]', the t-test p and its Holm correction, the exact sign-flip p with the smallest it can be
    at this n, and the seeds needed for p < 0.05 (exact sign-flip test / t-test at the observed effect).
    ``compact``: columns holding one value in every row left out (``paired_note`` states them)."""
    from analysis.paper import short_name

    lead = [c for c in table.columns if c not in PAIRED_COLUMNS and c not in COMPARE_EXTRA]
    out = table[lead].copy().rename(columns={"base_classes": "base", "memory": "exemplars"})
    out["method"] = table["preset"].map(short_name)
    out["vs."] = table["reference"].map(short_name)
    out["classifier"] = table["metric"].map(lambda m: METRIC_SHORT.get(m, m))
    out["n"] = table["n"]
    out["mean diff"] = [_fmt(v) for v in table["mean_diff"]]
    out["95% CI"] = [_fmt_ci(lo, hi) for lo, hi in zip(table["ci_low"], table["ci_high"])]
    out["p (t)"] = [_fmt_p(p) for p in table["p_t"]]
    out["p (t, Holm)"] = [_fmt_p(p) for p in table["p_t_holm"]]
    out["p (sign-flip)"] = [_fmt_p(p) for p in table["p_value"]]
    out["p (sign-flip, Holm)"] = [_fmt_p(p) for p in table["p_holm"]]
    out["min. p"] = [_fmt_p(p) for p in table["p_min"]]
    out["seeds (sign-flip)"] = [str(int(a)) for a in table["seeds_sign_flip"]]
    out["seeds (t)"] = [_fmt_seeds(b) for b in table["seeds_t"]]
    if table["note"].astype(str).str.len().any():
        out["note"] = table["note"]
    if compact and len(out):
        const = [c for c in ("dataset", "base", "phases", "exemplars", "vs.", "n", "min. p", "seeds (sign-flip)")
                 if c in out and out[c].astype(str).nunique() == 1]
        out = out.drop(columns=const)
    return out


def paired_note(table: pd.DataFrame, alpha: float = ALPHA) -> str:
    """What the paired table's columns mean, for its caption: the tests, the correction, the smallest p."""
    from analysis.paper import short_name
    from analysis.tables import protocol_label

    m = sorted({int(v) for v in table["m"]}) if "m" in table and len(table) else []
    consts = []
    if len(table):
        if all(c in table and table[c].astype(str).nunique() == 1 for c in ("dataset", "base_classes", "memory")):
            ph = table["phases"].astype(str).unique() if "phases" in table else []
            consts.append(protocol_label(table["dataset"].iloc[0], table["base_classes"].iloc[0],
                                         ph[0] if len(ph) == 1 else None, table["memory"].iloc[0]))
        if table["reference"].nunique() == 1:
            consts.append(f"each method minus {short_name(table['reference'].iloc[0])}")
        if table["n"].nunique() == 1:
            n = int(table["n"].iloc[0])
            consts.append(f"n = {n} pairs (the smallest sign-flip p at n = {n}: {_fmt_p(min_sign_flip_p(n))})")
        if table["seeds_sign_flip"].nunique() == 1:
            consts.append(f"an exact sign-flip test needs {int(table['seeds_sign_flip'].iloc[0])} seeds to reach "
                          f"p < {alpha:g} after the correction")
    return ("; ".join(consts) + ". " if consts else "") + (
           "Paired on (seed, class order), finished trials, last phase: mean difference (points) with its 95% "
            "t-interval; p (t): two-sided paired t-test (scipy.stats.ttest_rel); p (t, Holm), p (sign-flip, Holm): "
            "Holm-corrected "
            f"over the {'/'.join(map(str, m)) or '?'} comparisons of a protocol and classifier; p (sign-flip): exact "
            "two-sided sign-flip test (scipy.stats.permutation_test), which cannot go below min. p = 2/2^n (0.25 at "
            f"n = 3); seeds (sign-flip): pairs an exact sign-flip test needs for p < {alpha:g} after the "
            f"correction; seeds (t): pairs at which the observed effect would give p < {alpha:g} in the corrected "
            "t-test")


# --------------------------------------------------------------------------- variance split
VARIANCE_COLUMNS = ["preset", "metric", "orders", "seeds", "trials", "mean", "var_total", "var_order", "var_seed",
                    "var_order_adj", "order_share", "note"]


def variance_split(df: pd.DataFrame, metric: str | Sequence[str] = "avg_inc_acc_cnn") -> pd.DataFrame:
    """Seed vs class-order variance of each protocol x preset's last-phase ``metric`` (see the module doc).

    Only groups where both the training seed and the class order take >= 2 values get a row.
    """
    metrics, keys, lead, groups = _groups(df, metric, extra=("preset",))
    rows = []
    for key, g in groups:
        seeds, orders = g["seed"].map(_hashable), g["class_order_seed"].map(_hashable)
        if seeds.nunique() < 2 or orders.nunique() < 2:
            continue
        kd = dict(zip(keys, key))
        for m in metrics:
            row = {**_label_row(kd, keys[:-1], str(g["memory"].iloc[0])), "preset": kd["preset"], "metric": m,
                   **variance_components(g[m].astype(float).to_numpy(), orders.to_numpy())}
            row["seeds"] = int(seeds.nunique())
            rows.append(row)
    return _sorted(pd.DataFrame(rows, columns=lead + VARIANCE_COLUMNS), lead)


VARIANCE_NOTE = ("; var. order: variance of the class-order means; var. seed: mean within-order variance over "
                 "seeds; adj.: max(0, var. order - var. seed / n_h), n_h the harmonic mean of seeds per order; "
                 "order share: adj. / (adj. + var. seed)")


def format_variance(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``variance_split`` for a paper: method and classifier in words, numbers at 2 decimals, the columns that
    hold one value in every row (the protocol, orders, seeds, an empty note) left out and returned."""
    from analysis import tables
    from analysis.paper import short_name

    lead = [c for c in table.columns if c not in VARIANCE_COLUMNS]
    out = table[lead].copy().rename(columns={"base_classes": "base", "memory": "exemplars"})
    out["method"] = table["preset"].map(short_name)
    out["classifier"] = table["metric"].map(lambda m: METRIC_SHORT.get(m, m))
    for col, name in (("orders", "class orders"), ("seeds", "seeds per order"), ("trials", "trials")):
        out[name] = table[col].astype(int)
    for col, name in (("mean", "mean (%)"), ("var_total", "var. total"), ("var_order", "var. order"),
                      ("var_seed", "var. seed"), ("var_order_adj", "adj."), ("order_share", "order share")):
        out[name] = [tables.DASH if pd.isna(v) else f"{v:.2f}" for v in table[col]]
    if table["note"].astype(str).str.len().any():
        out["note"] = table["note"]
    return tables.drop_constant(out, ("dataset", "base", "phases", "exemplars", "class orders", "seeds per order",
                                      "trials"))


def variance_components(values: Sequence[float], orders: Sequence[Any]) -> dict[str, Any]:
    """The estimator of ``variance_split`` on one group: values (one per trial) and their class orders."""
    s = pd.Series(np.asarray(values, dtype=float)).reset_index(drop=True)
    o = pd.Series(list(orders)).reset_index(drop=True)
    ok = s.notna()
    s, o = s[ok], o[ok]
    by = s.groupby(o)
    means, within, counts = by.mean(), by.var(ddof=1), by.size()
    within = within[counts >= 2]
    var_order = float(means.var(ddof=1)) if len(means) > 1 else math.nan
    var_seed = float(within.mean()) if len(within) else math.nan
    n_h = float(len(counts) / np.sum(1.0 / counts.to_numpy(dtype=float))) if len(counts) else math.nan
    adj = max(0.0, var_order - var_seed / n_h) if not (math.isnan(var_order) or math.isnan(var_seed)) else math.nan
    share = adj / (adj + var_seed) if not math.isnan(adj) and (adj + var_seed) > 0 else math.nan
    notes = []
    if len(within) < len(counts):
        notes.append(f"{len(counts) - len(within)} class order(s) with one seed: not in var_seed")
    if counts.nunique() > 1:
        notes.append("unbalanced: seeds per order " + "/".join(str(int(c)) for c in counts))
    return {"orders": int(len(counts)), "trials": int(len(s)), "mean": float(s.mean()) if len(s) else math.nan,
            "var_total": float(s.var(ddof=1)) if len(s) > 1 else math.nan, "var_order": var_order,
            "var_seed": var_seed, "var_order_adj": adj, "order_share": share, "note": "; ".join(notes)}


# --------------------------------------------------------------------------- forest plot
def _row_label(r: pd.Series, multi_protocol: bool, vary: Sequence[str], differ: Sequence[str] = ()) -> str:
    from analysis.style import fmt_value as _fv
    from analysis.tables import protocol_label

    from analysis.paper import short_name

    label = short_name(r["preset"])
    if multi_protocol and differ:  # only what tells the protocols apart, on the same line
        return label + ", " + ", ".join(f"{r[c]} phase" + ("" if str(r[c]) == "1" else "s") if c == "phases" else f"{c}={r[c]}" for c in differ) + (
            " (" + ", ".join(f"{k}={_fv(r[k])}" for k in vary) + ")" if vary else "")
    if vary:
        from analysis.style import fmt_value

        label += " (" + ", ".join(f"{k}={fmt_value(r[k])}" for k in vary) + ")"
    if multi_protocol:
        label += f"\n{protocol_label(r['dataset'], r['base_classes'], r['phases'], r['memory'])}"
    return label


def forest_figure(table: pd.DataFrame):
    """A forest plot of a ``paired_table`` (or ``compare_table``): one row per preset (per protocol when
    there are several), the mean difference with its 95% CI as a horizontal error bar, a line at 0; one panel
    per metric. Rows without an interval (n < 3) show the mean as an open marker. None for an empty table."""
    if table is None or not len(table):
        return None
    from analysis import style  # selects the headless backend
    from matplotlib.ticker import MaxNLocator

    with style.context():
        return _draw_forest(table, style, MaxNLocator)


def _draw_forest(table: pd.DataFrame, style, MaxNLocator):
    vary = [c for c in table.columns if c not in _LABEL_COLS and c not in PAIRED_COLUMNS
            and c not in COMPARE_EXTRA]
    proto = [c for c in _LABEL_COLS if c in table]
    multi = table[proto].astype(str).drop_duplicates().shape[0] > 1
    rows = table.drop_duplicates(subset=proto + vary + ["preset"])
    differ = [c for c in proto if table[c].astype(str).nunique() > 1]
    labels = [_row_label(r, multi, vary, differ) for _, r in rows.iterrows()]
    keys = [tuple(str(r[c]) for c in proto + vary + ["preset"]) for _, r in rows.iterrows()]
    pos = {k: i for i, k in enumerate(keys)}
    metrics = list(dict.fromkeys(table["metric"]))
    height = 0.75 + 0.26 * len(keys) * (1.0 if differ or not multi else 1.8)
    fig, axes = style.figure(style.COLUMN if len(metrics) <= 2 else style.PAGE, height, ncols=len(metrics),
                             sharey=True, squeeze=False)
    for ax, m in zip(axes[0], metrics):
        t = table[table["metric"] == m]
        for _, r in t.iterrows():
            y = pos[tuple(str(r[c]) for c in proto + vary + ["preset"])]
            mean, lo, hi = float(r["mean_diff"]), float(r["ci_low"]), float(r["ci_high"])
            if math.isnan(mean):
                continue
            if math.isnan(lo) or math.isnan(hi):  # n < 3: the mean alone (open marker), said in the caption
                ax.plot([mean], [y], marker="o", mfc="white", color="0.4", ls="none")
                continue
            st = style.preset_style(r["preset"])
            ax.errorbar([mean], [y], xerr=[[mean - lo], [hi - mean]], fmt=st["marker"], color=st["color"],
                        capsize=2, ms=4)
            ax.annotate(f"n={int(r['n'])}", (hi, y), textcoords="offset points", xytext=(4, 2), color="0.3")
        ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=3 if len(metrics) > 1 else 4))  # no overlapping labels
        ax.margins(x=0.25)
        ax.set_xlabel(f"diff. avg. inc. acc. ({METRIC_SHORT.get(m, m)}) (points)")
        ax.grid(False, axis="y")
    axes[0][0].set_yticks(range(len(labels)), labels)
    axes[0][0].set_ylim(len(labels) - 0.5, -0.5)
    # no title: the caption says what is drawn, and that open circles (n < 3) have no interval
    return fig


def forest_plot(table: pd.DataFrame, path: str | os.PathLike, formats: Iterable[str] | None = None) -> list[Path]:
    """Save ``forest_figure`` as ``path`` without its extension + each of ``formats`` (default PNG, PDF,
    SVG; atomically, with ``analysis.style.save``); the PNG first; [] when empty."""
    from analysis import style

    fig = forest_figure(table)
    if fig is None:
        return []
    return style.save(fig, path, formats or style.FORMATS)


# --------------------------------------------------------------------------- report section
def report_section(exp, root: Path, formats: Iterable[str], rep=None, reference: str = DEFAULT_REFERENCE,
                   written: dict | None = None) -> list[str]:
    """The '## Paired comparison with <reference>' lines of index.md; writes its tables and forest plot under
    ``root/tables`` and ``root/figures`` (and adds them to ``rep.tables`` / ``rep.figures``)."""
    from analysis import tables

    df = exp.frame
    head = [f"## Paired comparison with {reference}", ""]
    presets = sorted(p for p in df["preset"].dropna().unique())
    kind = exp.meta.get("kind")
    why = None
    if kind == "search":
        why = "a search compares configurations, not ablation rungs"
    elif len(presets) < 2:
        why = f"it needs at least 2 presets; this experiment has {len(presets)} ({', '.join(presets) or 'none'})"
    elif reference not in presets:
        why = (f"the reference preset {reference!r} is not in this experiment (presets: {', '.join(presets)}); "
               "choose one with `--reference NAME`")
    if why:
        return head + [f"Not computed: {why}.", ""]
    tab = paired_table(df, reference=reference, metric=list(METRICS))
    if not len(tab):
        return head + [f"Not computed: no protocol has both a finished {reference} trial and another finished "
                       "preset.", ""]
    formats = tuple(formats)
    tdir, fdir = Path(root) / "tables", Path(root) / "figures"
    name = f"paired_{tables.slug(reference)}"
    from analysis.paper import with_schedule

    note = with_schedule(paired_note(tab), df)
    paths = tables.export_table(tab, tdir / name, formats, display=format_paired(tab, compact=True),
                                caption=f"Paired difference of each method to {tables.paper_name(reference)} "
                                        "(points, average incremental accuracy at the last phase)",
                                note=note, label_prefix=exp.name)
    figs = forest_plot(tab, fdir / f"forest_{tables.slug(reference)}")
    if figs:
        from analysis import plots

        few = sorted({int(v) for v in tab.loc[tab["ci_low"].isna(), "n"]})
        plots.FIGURE_NOTES[f"forest_{tables.slug(reference)}"] = with_schedule(
            f"Paired difference of each method minus {tables.paper_name(reference)} (points, average incremental "
            "accuracy at the last phase), mean and 95% t-interval over the (seed, class order) pairs"
            + (f"; open circles: n = {'/'.join(map(str, few))} pairs, too few for an interval (none drawn)"
               if few else ""), df)
    if rep is not None:
        rep.tables += paths
        rep.figures += figs
    if written is not None:
        written[name] = paths
    lines = head + [
        f"Each method minus `{reference}` on the last-phase average incremental accuracy (points), paired on "
        "(seed, class_order_seed) within one protocol, finished trials only. " + tables.caption_text(note)
        + f" Fewer than {MIN_PAIRS} pairs get no interval (see *note*).", "",
        tables.to_markdown(format_paired(tab, compact=True)),
        "Files: " + " · ".join(f"[{p.name}]({p.relative_to(root).as_posix()})" for p in paths), ""]
    for f in figs:
        rel = f.relative_to(root).as_posix()
        if rel.endswith(".png"):
            from analysis import plots

            lines += [f"![{f.stem}]({rel})", "", f"*{plots.FIGURE_NOTES.get(f.stem, '')}*", ""]
    var = variance_split(df, list(METRICS))
    if len(var):
        from analysis.paper import with_schedule

        shown, consts = format_variance(var)
        vpaths = tables.export_table(var, tdir / "variance_split", formats, label_prefix=exp.name, display=shown,
                                     note=with_schedule(tables.constant_note(consts) + VARIANCE_NOTE, df),
                                     caption="Seed vs class-order variance of the last-phase average incremental "
                                             "accuracy (points squared)")
        if rep is not None:
            rep.tables += vpaths
        lines += ["### Seed vs class-order variance", "",
                  "Per preset, `var_order` is the variance of the class-order means, `var_seed` the mean "
                  "within-order variance over seeds, `var_order_adj = max(0, var_order - var_seed / n_h)` "
                  "(n_h: harmonic mean of seeds per order) and `order_share = var_order_adj / (var_order_adj "
                  "+ var_seed)`.", "", tables.to_markdown(var, floatfmt=".3f"),
                  "Files: " + " · ".join(f"[{p.name}]({p.relative_to(root).as_posix()})" for p in vpaths), ""]
    else:
        lines += ["Seed vs class-order variance: not split (the training seed and the class order do not both "
                  "vary within a preset).", ""]
    return lines


# --------------------------------------------------------------------------- compare two experiments
COMPARE_EXTRA = ("n_a", "mean_a", "std_a", "n_b", "mean_b", "std_b", "diff", "pairing")


def compare_table(df_a: pd.DataFrame, df_b: pd.DataFrame, metric: str | Sequence[str] = METRICS,
                  confidence: float = CONFIDENCE) -> tuple[pd.DataFrame, list[str]]:
    """Experiments A and B side by side: per (protocol, preset) in both, per metric (last phase, finished):
    n / mean / std of each, ``diff`` = mean B - mean A, and the test: paired (t-interval, sign-flip p) on the
    shared (seed, class order) pairs when there are >= 3 of them, else unpaired (Welch t-interval and p).
    Returns (table, notes); notes name config fields that differ between A and B."""
    metrics = [metric] if isinstance(metric, str) else list(metric)
    la, lb = _finished_last(df_a), _finished_last(df_b)
    notes: list[str] = []
    vary = sorted(set(varied_fields(la) if len(la) else []) | set(varied_fields(lb) if len(lb) else []))
    keys = _group_keys(la if len(la) else lb, vary) + ["preset"]
    lead = list(_LABEL_COLS) + vary
    cols = lead + ["preset", "metric", *COMPARE_EXTRA, "n", "mean_diff", "sd_diff", "ci_low", "ci_high",
                   "p_value", "p_min", "p_t", "test", "note"]
    if not len(la) or not len(lb):
        notes.append("no finished trial in " + " and ".join(n for n, d in (("A", la), ("B", lb)) if not len(d)))
        return pd.DataFrame(columns=cols), notes
    for k in keys:
        for d in (la, lb):
            if k not in d:
                d[k] = None
    ga = dict(iter(la.groupby([_key_cols(la, keys)[k] for k in keys], dropna=False, sort=False)))
    gb = dict(iter(lb.groupby([_key_cols(lb, keys)[k] for k in keys], dropna=False, sort=False)))
    ga = {k if isinstance(k, tuple) else (k,): v for k, v in ga.items()}
    gb = {k if isinstance(k, tuple) else (k,): v for k, v in gb.items()}
    common = [k for k in ga if k in gb]
    only_a, only_b = sorted(set(ga) - set(gb), key=str), sorted(set(gb) - set(ga), key=str)
    if only_a or only_b:
        notes.append(f"groups in only one experiment (not compared): {len(only_a)} in A, {len(only_b)} in B")
    # constant config that differs between A and B (a setting the user changed on purpose, most likely)
    diff_fields = []
    for c in sorted(set(identity_fields(la)) | set(identity_fields(lb))):
        va = set(la[c].map(_hashable)) if c in la else {None}
        vb = set(lb[c].map(_hashable)) if c in lb else {None}
        if va != vb and c not in vary:
            diff_fields.append(f"{c}: A={_set_text(va)}, B={_set_text(vb)}")
    if diff_fields:
        notes.append("config differs between A and B: " + "; ".join(diff_fields))
    rows = []
    for key in common:
        a, b = ga[key], gb[key]
        label = {**_label_row(dict(zip(keys, key)), keys[:-1], str(a["memory"].iloc[0])), "preset": key[-1]}
        for m in metrics:
            pa, _ = _per_pair(a, m)
            pb, _ = _per_pair(b, m)
            va, vb = a[m].astype(float).dropna(), b[m].astype(float).dropna()
            shared = pa.index.intersection(pb.index)
            row = {**label, "metric": m, "n_a": int(len(va)), "mean_a": _mean(va), "std_a": _std(va),
                   "n_b": int(len(vb)), "mean_b": _mean(vb), "std_b": _std(vb)}
            row["diff"] = row["mean_b"] - row["mean_a"]
            if len(shared) >= MIN_PAIRS:
                st = paired_stats((pb.loc[shared] - pa.loc[shared]).to_numpy(dtype=float), confidence)
                row["pairing"] = "paired"
                extra = []
                if len(shared) < max(len(pa), len(pb)):
                    extra.append(f"paired on the {len(shared)} shared (seed, class order) pairs; "
                                 f"{len(pa) - len(shared)} A and {len(pb) - len(shared)} B runs left out")
            else:
                st = welch_stats(va.to_numpy(), vb.to_numpy(), confidence)
                row["pairing"] = "unpaired (Welch)"
                extra = [f"{len(shared)} shared (seed, class order) pairs < {MIN_PAIRS}: unpaired"] if len(shared) \
                    else ["no shared (seed, class order) pairs: unpaired"]
            row.update({k: st[k] for k in _STAT_KEYS})
            row["note"] = "; ".join(x for x in [*extra, st["note"]] if x)
            rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    for c in ("n_a", "n_b", "n"):
        out[c] = out[c].astype(int)
    return _sorted(out, lead), notes


def _set_text(vals: set) -> str:
    return ", ".join(sorted(str(v) for v in vals))


def _mean(v: pd.Series) -> float:
    return float(v.mean()) if len(v) else math.nan


def _std(v: pd.Series) -> float:
    return float(v.std(ddof=1)) if len(v) > 1 else math.nan


def format_compare(table: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> pd.DataFrame:
    """Text cells: 'A (name)' '60.00 ± 2.00 (n=3)', 'B − A', test, 95% CI, p, note."""
    from analysis.tables import fmt_mean_std

    lead = [c for c in table.columns if c in _LABEL_COLS or c not in
            (*COMPARE_EXTRA, *PAIRED_COLUMNS)]
    out = table[lead + ["preset", "metric"]].copy().rename(columns={"base_classes": "base", "memory": "exemplars"})
    out[f"A: {name_a}"] = [f"{fmt_mean_std(m, s)} (n={n})" for m, s, n in
                           zip(table["mean_a"], table["std_a"], table["n_a"])]
    out[f"B: {name_b}"] = [f"{fmt_mean_std(m, s)} (n={n})" for m, s, n in
                           zip(table["mean_b"], table["std_b"], table["n_b"])]
    out["B − A"] = [_fmt(v) for v in table["diff"]]
    out["test"] = table["pairing"]
    out["n"] = table["n"]
    out["mean diff"] = [_fmt(v) for v in table["mean_diff"]]
    out["95% CI"] = [_fmt_ci(lo, hi) for lo, hi in zip(table["ci_low"], table["ci_high"])]
    out["p"] = [_fmt_p(p) for p in table["p_value"]]
    out["note"] = table["note"]
    return out


def compare_for_paper(display: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``format_compare``'s table for a paper (the LaTeX export): method and classifier in words, the columns
    that hold one value in every row (protocol, test, n, note) left out and returned for the caption."""
    from analysis import tables
    from analysis.paper import short_name

    out = display.assign(preset=display["preset"].map(short_name),
                         metric=display["metric"].map(lambda m: METRIC_SHORT.get(m, m)))
    out = out.rename(columns={"preset": "method", "metric": "classifier", "n": "pairs", "mean diff": "paired diff"})
    return tables.drop_constant(out, ("dataset", "base", "phases", "exemplars", "test", "pairs", "note"))


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"


def build_compare(exp_a: str | os.PathLike, exp_b: str | os.PathLike, out: str | os.PathLike | None = None,
                  formats: Iterable[str] = ("csv", "md"), echo: Callable[[str], None] = print) -> Path:
    """Write ``<out>/compare.md`` and ``compare.csv`` (+ ``compare.tex`` when asked) of B against A; print
    the table. Default ``out``: ``<B>/compare-<A name>`` (beside ``<B>/report``, which ``lucir report B``
    replaces as a whole). Returns the Markdown file."""
    from analysis import tables
    from analysis.results import read_experiment, utc

    a, b = read_experiment(exp_a), read_experiment(exp_b)
    for e in (a, b):
        if not e.trials:
            raise ExperimentError(f"{e.path} has no trials yet: nothing to compare")
    out = Path(out).expanduser().absolute() if out else b.path / f"compare-{_safe_name(a.name)}"
    out.mkdir(parents=True, exist_ok=True)
    tab, notes = compare_table(a.frame, b.frame)
    display = format_compare(tab, a.name, b.name)
    fmts = [f for f in dict.fromkeys(("csv", "md", *formats)) if f in ("csv", "md", "tex")]
    paper, consts = compare_for_paper(display)
    paths = tables.export_table(tab, out / "compare", [f for f in fmts if f != "md"], display=paper,
                                note=tables.constant_note(consts) or None,
                                caption=f"{tables.header_words(b.name)} (B) against {tables.header_words(a.name)} (A): "
                                        "last-phase average incremental accuracy (%)")
    lines = [f"# Compare: {b.name} (B) against {a.name} (A)", "",
             f"- A: `{a.path}`", f"- B: `{b.path}`", "",
             "Last-phase average incremental accuracy (CNN and NME, %) of the finished trials, per protocol and "
             "preset in both experiments: mean ± std over seeds, and the difference B − A. Where both have at "
             f"least {MIN_PAIRS} of the same (seed, class_order_seed) pairs the difference is **paired** "
             f"({int(CONFIDENCE * 100)}% t-interval of the paired differences, exact / Monte-Carlo sign-flip "
             f"p-value); otherwise it is **unpaired** (Welch t-interval and Welch t-test p). The *test* column "
             "says which.", ""]
    if len(tab):
        lines += [tables.to_markdown(display), ""]
    else:
        lines += ["No (protocol, preset) has finished trials in both experiments: nothing to compare.", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Files: " + " · ".join(f"[{p.name}]({p.name})" for p in paths), "",
              f"_Generated by `lucir report --compare` at {utc(pd.Timestamp.now(tz='UTC').timestamp())}._", ""]
    md = out / "compare.md"
    tables._atomic_write(md, "\n".join(lines))
    echo(tables.to_markdown(display).rstrip() if len(tab) else "no (protocol, preset) in both experiments")
    for n in notes:
        echo(f"note: {n}")
    echo(f"compare: {md}")
    return md


def run_compare(exp_a: str, exp_b: str, out: str | None, formats: Iterable[str] = ("csv", "md")) -> int:
    """``lucir report --compare A B``: 0 on success, 2 for a folder that is not an experiment or has no trials."""
    try:
        build_compare(exp_a, exp_b, out, formats)
    except (ExperimentError, ValueError) as exc:
        print(f"lucir report --compare: error: {exc}", file=sys.stderr)
        return 2
    return 0
