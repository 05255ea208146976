"""Paired statistics (analysis.paired): t-interval, sign-flip p, refusal for n < 3, pairing, variance split,
``lucir report --compare`` and the report's paired section."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from analysis_fixtures import ablation_trials, make_trial, write_experiment
from scipy import stats

from analysis import paired
from analysis.results import frame_from_records, read_experiment
from lucir.cli import main


def _frame(trials: list[dict], tmp_path, name: str = "exp") -> pd.DataFrame:
    return read_experiment(write_experiment(tmp_path / name, trials, name=name)).frame


def test_paired_t_interval_equals_the_hand_computation(tmp_path):
    ref = {0: 60.0, 1: 62.0, 2: 61.0, 3: 65.0}
    other = {0: 61.0, 1: 65.0, 2: 61.5, 3: 69.0}
    trials = [make_trial(f"l{s}", preset="lucir", seed=s, acc=a) for s, a in ref.items()]
    trials += [make_trial(f"c{s}", preset="cn", seed=s, acc=a) for s, a in other.items()]
    tab = paired.paired_table(_frame(trials, tmp_path), reference="lucir", metric="avg_inc_acc_cnn")
    assert len(tab) == 1
    row = tab.iloc[0]
    d = [other[s] - ref[s] for s in ref]                                     # 1, 3, 0.5, 4
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert row["preset"] == "cn" and row["reference"] == "lucir" and row["n"] == n
    assert row["mean_diff"] == pytest.approx(mean) and row["sd_diff"] == pytest.approx(sd)
    assert row["ci_low"] == pytest.approx(mean - half) and row["ci_high"] == pytest.approx(mean + half)
    # all positive: only the all-plus and all-minus flips reach |sum| = 8.5 -> p = 2/16
    assert row["p_value"] == pytest.approx(2 / 16)
    assert "exact (16 sign flips)" in row["test"] and row["note"] == ""
    # NME rows too (acc - 1 on both sides: the same differences)
    both = paired.paired_table(_frame(trials, tmp_path, "exp2"), metric=list(paired.METRICS))
    assert list(both["metric"]) == ["avg_inc_acc_cnn", "avg_inc_acc_nme"]
    assert both["mean_diff"].tolist() == pytest.approx([mean, mean])


def test_sign_flip_p_equals_the_enumeration():
    p, how = paired.sign_flip_p([1.0, 2.0, 3.0])
    assert p == pytest.approx(2 / 8) and how.startswith("exact (8")
    d = np.array([1.0, -2.0, 0.5, 3.0, -0.25])
    obs = abs(d.sum())
    hits = sum(abs(sum(s * x for s, x in zip(signs, d))) >= obs - 1e-12
               for signs in itertools.product((-1, 1), repeat=len(d)))
    assert paired.sign_flip_p(d)[0] == pytest.approx(hits / 2 ** len(d))
    # above 16 pairs: seeded Monte Carlo, (1 + hits) / (1 + 20000), reproducible
    big = np.linspace(-1.0, 2.0, 20)
    p1, how1 = paired.sign_flip_p(big)
    assert p1 == paired.sign_flip_p(big)[0] and "Monte Carlo (20000" in how1
    assert 0 < p1 < 1 and (p1 * 20001) == pytest.approx(round(p1 * 20001))
    assert paired.sign_flip_p([0.0, 0.0, 0.0])[0] == 1.0


def test_fewer_than_three_pairs_are_refused(tmp_path):
    trials = [make_trial(f"l{s}", preset="lucir", seed=s, acc=60.0 + s) for s in (0, 1)]
    trials += [make_trial(f"b{s}", preset="baseline", seed=s, acc=55.0 + 2 * s) for s in (0, 1)]
    row = paired.paired_table(_frame(trials, tmp_path)).iloc[0]
    assert row["n"] == 2 and row["mean_diff"] == pytest.approx(-4.5)
    assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"]) and math.isnan(row["p_value"])
    assert "refused: n=2 < 3 pairs" in row["note"] and "bootstrap" in row["note"] and "meaningless" in row["note"]
    assert paired.paired_stats([1.0])["note"] == paired.refused_note(1)


def test_unpaired_seeds_and_other_protocols_are_not_paired(tmp_path):
    trials = [make_trial(f"l{s}", preset="lucir", seed=s, acc=60.0) for s in (0, 1, 2, 3)]
    trials += [make_trial(f"c{s}", preset="cn", seed=s, acc=58.0 + s) for s in (2, 3, 4, 5, 6)]
    trials += [make_trial("c_unf", preset="cn", seed=0, acc=99.0, done=2)]              # unfinished: not counted
    trials += [make_trial(f"c_p2_{s}", preset="cn", seed=s, phases=2, acc=99.0) for s in (0, 1)]  # other protocol
    trials += [make_trial("c_o", preset="cn", seed=0, class_order_seed=7, acc=99.0)]    # same seed, other order
    tab = paired.paired_table(_frame(trials, tmp_path))
    assert len(tab) == 1                                     # phases=2 has no lucir trial: no row
    row = tab.iloc[0]
    assert row["n"] == 2 and row["mean_diff"] == pytest.approx(0.5)   # seeds 2, 3 only: (0 + 1) / 2
    assert "refused" in row["note"]
    assert "unpaired, left out: 4 cn and 2 lucir" in row["note"]


def test_variance_split_equals_the_hand_computation():
    # 2 class orders x 3 seeds, values known
    vals = {(1993, 0): 60.0, (1993, 1): 62.0, (1993, 2): 64.0, (7, 0): 50.0, (7, 1): 51.0, (7, 2): 55.0}
    recs = []
    from analysis.results import TrialRecord

    for (order, seed), v in vals.items():
        t = make_trial(f"t{order}_{seed}", preset="lucir", seed=seed, class_order_seed=order, acc=v)
        recs.append(TrialRecord(trial_id=t["trial_id"], config=t["config"], phases=t["phases"],
                                status="TERMINATED"))
    tab = paired.variance_split(frame_from_records(recs), metric="avg_inc_acc_cnn")
    assert len(tab) == 1
    row = tab.iloc[0]
    a, b = [60.0, 62.0, 64.0], [50.0, 51.0, 55.0]
    ma, mb = sum(a) / 3, sum(b) / 3
    var_order = ((ma - (ma + mb) / 2) ** 2 + (mb - (ma + mb) / 2) ** 2) / (2 - 1)
    va = sum((x - ma) ** 2 for x in a) / 2
    vb = sum((x - mb) ** 2 for x in b) / 2
    var_seed = (va + vb) / 2
    adj = max(0.0, var_order - var_seed / 3)
    assert row["orders"] == 2 and row["seeds"] == 3 and row["trials"] == 6
    assert row["var_order"] == pytest.approx(var_order) and row["var_seed"] == pytest.approx(var_seed)
    assert row["var_order_adj"] == pytest.approx(adj)
    assert row["order_share"] == pytest.approx(adj / (adj + var_seed))
    assert row["var_total"] == pytest.approx(np.var(a + b, ddof=1))
    # the class order does not vary: no split
    only_seed = [r for r in recs if r.config["class_order_seed"] == 1993]
    assert len(paired.variance_split(frame_from_records(only_seed))) == 0


def test_forest_plot_draws_one_row_per_preset(tmp_path):
    df = _frame(ablation_trials(seeds=(0, 1, 2), presets=("baseline", "cn", "lucir"), phase_counts=(3,)), tmp_path)
    tab = paired.paired_table(df, metric="avg_inc_acc_cnn")
    fig = paired.forest_figure(tab)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Baseline", "CN"]      # paper names
    assert not fig.get_suptitle() and not any(a.get_title() for a in fig.axes)  # no titles: the caption's job
    assert any(abs(line.get_xdata()[0]) < 1e-12 for line in ax.get_lines() if len(line.get_xdata()) == 2)
    import matplotlib.pyplot as plt

    plt.close(fig)
    paths = paired.forest_plot(tab, tmp_path / "fig" / "forest.png")
    assert paths and paths[0].read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "fig").glob(".*tmp"))


def _exp(tmp_path, name, trials):
    return write_experiment(tmp_path / name, trials, name=name, meta={"mlflow_uri": None})


def test_compare_paired_end_to_end(tmp_path, capsys):
    a = _exp(tmp_path, "expA", ablation_trials(seeds=(0, 1, 2), presets=("cn", "lucir"), phase_counts=(3,)))
    b_trials = ablation_trials(seeds=(0, 1, 2), presets=("cn", "lucir"), phase_counts=(3,))
    for t in b_trials:                                   # B = A + 1 + seed: paired differences 1, 2, 3
        s = t["config"]["seed"]
        for p in t["phases"]:
            for k in ("avg_inc_acc_cnn", "avg_inc_acc_nme", "acc_cnn", "acc_nme"):
                p[k] += 1.0 + s
    b = _exp(tmp_path, "expB", b_trials)
    assert main(["report", "--compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    md = b / "compare-expA" / "compare.md"
    assert md.is_file() and (md.parent / "compare.csv").is_file()
    assert f"compare: {md}" in out and "| cn" in out and "paired" in out
    tab = pd.read_csv(md.parent / "compare.csv")
    assert len(tab) == 4                                  # 2 presets x (CNN, NME)
    assert set(tab["pairing"]) == {"paired"}
    r = tab[(tab["preset"] == "lucir") & (tab["metric"] == "avg_inc_acc_cnn")].iloc[0]
    d = np.array([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert r["n_a"] == 3 and r["n_b"] == 3 and r["n"] == 3
    assert r["diff"] == pytest.approx(2.0) and r["mean_diff"] == pytest.approx(2.0)
    assert r["ci_low"] == pytest.approx(2.0 - half, abs=1e-4) and r["ci_high"] == pytest.approx(2.0 + half, abs=1e-4)
    assert r["p_value"] == pytest.approx(0.25)
    assert r["mean_a"] == pytest.approx(54.0) and r["std_a"] == pytest.approx(2.0)
    text = md.read_text()
    assert "# Compare: expB (B) against expA (A)" in text and "54.00 ± 2.00 (n=3)" in text


def test_compare_unpaired_uses_welch(tmp_path, capsys):
    a = _exp(tmp_path, "A", [make_trial(f"a{s}", seed=s, acc=60.0 + s) for s in (0, 1, 2)])
    b = _exp(tmp_path, "B", [make_trial(f"b{s}", seed=s, acc=62.0 + 2 * s) for s in (10, 11, 12, 13)])
    out_dir = tmp_path / "cmp"
    assert main(["report", "--compare", str(a), str(b), "--out", str(out_dir), "--formats", "csv,md"]) == 0
    capsys.readouterr()
    tab = pd.read_csv(out_dir / "compare.csv")
    r = tab[tab["metric"] == "avg_inc_acc_cnn"].iloc[0]
    assert r["pairing"] == "unpaired (Welch)" and "no shared (seed, class order) pairs" in r["note"]
    xa, xb = [60.0, 61.0, 62.0], [62.0 + 2 * s for s in (10, 11, 12, 13)]
    res = stats.ttest_ind(xb, xa, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert r["diff"] == pytest.approx(np.mean(xb) - np.mean(xa))
    assert r["ci_low"] == pytest.approx(ci.low, abs=1e-4) and r["ci_high"] == pytest.approx(ci.high, abs=1e-4)
    assert r["p_value"] == pytest.approx(res.pvalue, abs=1e-4)
    text = (out_dir / "compare.md").read_text()
    assert "unpaired (Welch)" in text and not (out_dir / "compare.tex").exists()
    assert main(["report", "--compare", str(a), str(tmp_path / "missing")]) == 2
    assert "not an experiment folder" in capsys.readouterr().err


def test_report_has_the_paired_section_for_an_ablation(tmp_path, capsys):
    exp = _exp(tmp_path, "abl", ablation_trials(seeds=(0, 1, 2), presets=("baseline", "cn", "lucir"),
                                                phase_counts=(3,)))
    assert main(["report", str(exp), "--no-mlflow", "--formats", "md,csv"]) == 0
    capsys.readouterr()
    rep = exp / "report"
    text = (rep / "index.md").read_text()
    assert "## Paired comparison with lucir" in text
    sec = text.split("## Paired comparison with lucir")[1]
    assert "| Baseline" in sec and "| CN" in sec and "[+" not in sec.split("| Baseline")[0]
    tab = pd.read_csv(rep / "tables" / "paired_lucir.csv")
    r = tab[(tab["preset"] == "baseline") & (tab["metric"] == "avg_inc_acc_cnn")].iloc[0]
    assert r["n"] == 3 and r["mean_diff"] == pytest.approx(-10.0) and r["ci_low"] == pytest.approx(-10.0)
    assert r["p_value"] == pytest.approx(0.25)                # all three differences -10: 2 of 8 flips
    assert r["p_min"] == pytest.approx(0.25) and r["p_t"] == 0.0    # no spread: the t-test excludes 0 ...
    assert r["m"] == 2 and r["seeds_sign_flip"] == 7                # ... the sign-flip test needs 7 seeds (Holm, m=2)
    assert "smallest sign-flip p at n = 3: 0.2500" in sec and "Holm" in sec
    assert (rep / "figures" / "forest_lucir.png").is_file()
    assert "figures/forest_lucir.png" in text
    assert text.count("![forest_lucir](figures/forest_lucir.png)") == 1      # embedded once, in its section
    assert (rep / "figures" / "forest_lucir.pdf").is_file() and (rep / "figures" / "forest_lucir.svg").is_file()
    assert "Seed vs class-order variance: not split" in text
    # another reference preset that is not there: the section says why not
    assert main(["report", str(exp), "--no-mlflow", "--formats", "md", "--reference", "joint"]) == 0
    text = (rep / "index.md").read_text()
    assert "## Paired comparison with joint" in text and "'joint' is not in this experiment" in text
    # one preset only: not computed
    one = _exp(tmp_path, "one", [make_trial(f"l{s}", seed=s) for s in (0, 1, 2)])
    assert main(["report", str(one), "--no-mlflow", "--formats", "md"]) == 0
    assert "it needs at least 2 presets" in (one / "report" / "index.md").read_text()


def test_scipy_statistics_match_the_hand_formulas_and_the_t_p_and_holm_columns(tmp_path):
    d = [1.0, 3.0, 0.5, 4.0]
    mean, sd, lo, hi = paired.t_interval(d)
    half = stats.t.ppf(0.975, 3) * np.std(d, ddof=1) / math.sqrt(4)
    assert (lo, hi) == pytest.approx((mean - half, mean + half))
    assert paired.t_test_p(d) == pytest.approx(stats.ttest_rel(np.array(d) + 5, np.full(4, 5.0)).pvalue)
    st = paired.paired_stats(d)
    assert st["p_min"] == pytest.approx(2 / 16) and st["p_t"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue)
    # two comparisons in one protocol and metric: Holm over 2
    ref = {0: 60.0, 1: 62.0, 2: 61.0}
    trials = [make_trial(f"l{s}", preset="lucir", seed=s, acc=a) for s, a in ref.items()]
    trials += [make_trial(f"c{s}", preset="cn", seed=s, acc=a + 1.0 + 0.1 * s) for s, a in ref.items()]
    trials += [make_trial(f"b{s}", preset="baseline", seed=s, acc=a - 0.5 + s) for s, a in ref.items()]
    tab = paired.paired_table(_frame(trials, tmp_path), metric="avg_inc_acc_cnn").set_index("preset")
    p = tab["p_t"].to_dict()
    assert tab.loc["cn", "p_t_holm"] == pytest.approx(min(1, 2 * min(p.values())) if p["cn"] < p["baseline"]
                                                     else max(min(1, 2 * min(p.values())), p["cn"]))
    assert set(tab["m"]) == {2} and set(tab["seeds_sign_flip"]) == {7}
    assert tab.loc["cn", "seeds_t"] >= 2
