"""Tables from synthetic experiments with known values: every number is checked against a hand computation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from analysis_fixtures import make_trial, write_experiment

from analysis.results import frame_from_records, load_experiment
from analysis import tables


def _frame(tmp_path, trials, **kw):
    return load_experiment(write_experiment(tmp_path / "exp", trials, **kw))


@pytest.fixture
def known(tmp_path):
    """lucir: seeds with avg_inc_acc_cnn 60, 62, 64 (forgetting 10, 13, 19); joint: one seed at 70;
    a pruned lucir trial at 99 (must not count); all digits B4 3 phases."""
    trials = [make_trial("l0", preset="lucir", seed=0, acc=60.0, forgetting=10.0),
              make_trial("l1", preset="lucir", seed=1, acc=62.0, forgetting=13.0),
              make_trial("l2", preset="lucir", seed=2, acc=64.0, forgetting=19.0),
              make_trial("j0", preset="joint", seed=0, acc=70.0, forgetting=1.0),
              make_trial("lp", preset="lucir", seed=3, acc=99.0, done=2, status="PRUNED")]
    return _frame(tmp_path, trials)


def test_summary_mean_and_sample_std_over_seeds_match_hand_computation(known):
    s = tables.summary_table(known)
    lucir = s[s["preset"] == "lucir"].iloc[0]
    assert lucir["seeds"] == 3 and lucir["excluded"] == 1          # the pruned trial is left out and counted
    assert lucir["avg_inc_acc_cnn_mean"] == pytest.approx(62.0)    # (60 + 62 + 64) / 3
    assert lucir["avg_inc_acc_cnn_std"] == pytest.approx(2.0)      # sqrt((4 + 0 + 4) / (3 - 1))
    assert lucir["avg_inc_acc_nme_mean"] == pytest.approx(61.0)    # NME = CNN - 1 in the fixture
    assert lucir["last_acc_cnn_mean"] == pytest.approx(62.0)
    assert lucir["forgetting_cnn_mean"] == pytest.approx(14.0)     # (10 + 13 + 19) / 3
    assert lucir["forgetting_cnn_std"] == pytest.approx(math.sqrt(21.0))  # sqrt((16 + 1 + 25) / 2)
    assert lucir["trial_seconds_mean"] == pytest.approx(1.5 + 2.5 + 3.5 + 4.5)  # phase_seconds summed
    joint = s[s["preset"] == "joint"].iloc[0]
    assert joint["seeds"] == 1 and joint["avg_inc_acc_cnn_mean"] == 70.0
    assert math.isnan(joint["avg_inc_acc_cnn_std"])                # one seed: no std (ddof=1)
    text = tables.format_summary(s).set_index("preset")
    assert text.loc["lucir", "avg. inc. acc. CNN (%)"] == "62.00 ± 2.00"
    assert text.loc["joint", "avg. inc. acc. CNN (%)"] == "70.00"   # the mean alone for one seed
    assert text.loc["lucir", "method"] == tables.PAPER_NAMES["lucir"]
    assert not any("time" in c or "second" in c for c in text.columns)  # time is a cost, not a result
    assert list(s["preset"]) == ["lucir", "joint"]                  # ladder order


def test_curve_table_gives_accuracy_after_each_phase(tmp_path):
    trials = [make_trial("a", seed=0, acc=60.0), make_trial("b", seed=1, acc=64.0),
              make_trial("c", preset="cn", seed=0, acc=50.0), make_trial("d", preset="cn", seed=1, done=2)]
    (label, tab), = tables.curve_tables(_frame(tmp_path, trials)).items()
    assert label == "digits B4 3 phases 5/class"
    cn, lucir = tables.paper_name("cn"), tables.paper_name("lucir")
    assert list(tab.index) == [cn, lucir]                       # paper names, ladder order
    assert list(tab.columns) == ["4 classes", "6 classes", "8 classes", "10 classes"]
    assert tab.loc[lucir, "8 classes"] == "62.00 ± 2.83"        # mean(60, 64), std sqrt(8)
    assert tab.loc[cn, "10 classes"] == "50.00"                 # the unfinished cn seed does not count


def test_protocols_are_kept_apart(tmp_path):
    trials = [make_trial("a", phases=2, acc=50.0), make_trial("b", phases=3, acc=40.0),
              make_trial("c", phases=3, acc=44.0, exemplars_per_class=10)]
    s = tables.summary_table(_frame(tmp_path, trials))
    assert len(s) == 3
    got = {(r.phases, r.memory): r.avg_inc_acc_cnn_mean for r in s.itertuples()}
    assert got == {(2, "5/class"): 50.0, (3, "5/class"): 40.0, (3, "10/class"): 44.0}


def test_varied_hyperparameters_are_not_averaged_as_seeds(tmp_path):
    trials = [make_trial("a", seed=0, acc=50.0, margin=0.3), make_trial("b", seed=1, acc=52.0, margin=0.3),
              make_trial("c", seed=0, acc=70.0, margin=0.6)]
    s = tables.summary_table(_frame(tmp_path, trials))
    assert "margin" in s.columns
    got = {r.margin: (r.seeds, r.avg_inc_acc_cnn_mean) for r in s.itertuples()}
    assert got == {0.3: (2, 51.0), 0.6: (1, 70.0)}


def test_ablation_table_has_ladder_rows_and_phase_columns(tmp_path):
    trials = []
    # written in a scrambled order; acc = 40 + 5 * rung - phases + 2 * seed
    for preset, rung in (("lucir", 4), ("finetune", 0), ("cn_lf", 3), ("baseline", 1)):
        for phases in (3, 2):
            for seed in (0, 1, 2):
                trials.append(make_trial(f"{preset}{phases}{seed}", preset=preset, phases=phases, seed=seed,
                                         acc=40.0 + 5 * rung - phases + 2 * seed))
    trials.append(make_trial("x", preset="cn", phases=3, done=1))  # cn never finished: no row at all
    abl = tables.ablation_tables(_frame(tmp_path, trials))
    assert list(abl) == ["digits B4 5/class"]
    t = abl["digits B4 5/class"].data.set_index("preset")
    assert list(t.index) == ["finetune", "baseline", "cn", "cn_lf", "lucir"]
    assert list(t["method"]) == [tables.PAPER_NAMES[p] for p in t.index]
    assert [c for c in t.columns if "phases" in c] == ["CNN, 2 phases (%)", "NME, 2 phases (%)", "n (2 phases)",
                                                       "CNN, 3 phases (%)", "NME, 3 phases (%)", "n (3 phases)"]
    assert t.loc["lucir", "CNN, 2 phases (%)"] == "60.00 ± 2.00"    # 40 + 20 - 2 + mean(0, 2, 4)
    assert t.loc["lucir", "NME, 2 phases (%)"] == "59.00 ± 2.00"    # NME = CNN - 1 in the fixture
    assert t.loc["finetune", "CNN, 3 phases (%)"] == "39.00 ± 2.00"
    assert t.loc["cn", "CNN, 3 phases (%)"] == tables.DASH and t.loc["cn", "n (3 phases)"] == 0
    assert t.loc["lucir", "n (2 phases)"] == 3


def _search_trials():
    out = []
    for i, (margin, K, acc) in enumerate([(0.1, 1, 55.0), (0.5, 2, 63.0), (0.9, 1, 58.0), (0.3, 2, 61.0)]):
        out.append(make_trial(f"s{i}", margin=margin, K=K, lambda_base=5.0 + i, acc=acc))
    out.append(make_trial("pruned", margin=0.7, K=2, acc=90.0, done=2, status="PRUNED"))  # looks better: excluded
    return out


def test_search_summary_ranks_finished_trials_only(tmp_path):
    meta = {"param_space": {"margin": "uniform(0.0, 1.0)", "K": "randint(1, 2) inclusive",
                            "lambda_base": "loguniform(0.5, 50.0)", "eta_init": 1.0, "dataset": "digits"}}
    df = _frame(tmp_path, _search_trials(), kind="search", meta=meta)
    assert tables.searched_params(df, meta) == ["lambda_base", "margin", "K"]
    top = tables.search_summary(df, meta, k=3)
    assert list(top["trial_id"]) == ["s1", "s3", "s2"]
    assert list(top["rank"]) == [1, 2, 3]
    assert list(top["avg_inc_acc_cnn"]) == [63.0, 61.0, 58.0]
    assert {"margin", "K", "lambda_base"} <= set(top.columns)
    assert tables.best_trial(df)["trial_id"] == "s1"
    assert tables.best_trial(df, mode="min")["trial_id"] == "s0"


def test_best_command_line_reproduces_the_config():
    from lucir.cli import build_parser, config_overrides
    from lucir.config import Config

    cfg = Config.from_flat(dataset="digits", preset="lucir", phases=2, seed=3, epochs=4, margin=0.3141,
                           K=1, lambda_base=7.25, eta_init=2.0, milestones=[1, 3], exemplars_per_class=7,
                           device="cpu", threads=1)
    line = tables.best_command_line(cfg.to_flat())
    assert line.startswith("lucir train --dataset digits --preset lucir")
    assert "device" not in line and "threads" not in line  # runtime fields do not decide the result
    import shlex

    args = build_parser().parse_args(shlex.split(line)[1:])
    again = Config.from_flat(config_overrides(args))
    assert again.identity() == cfg.identity()


def test_best_command_line_names_the_data_root_of_an_on_disk_dataset():
    from lucir.config import Config

    flat = Config.from_flat(dataset="cifar100", preset="lucir", data_root="/data/x y", epochs=3).to_flat()
    line = tables.best_command_line(flat)
    assert "--data-root '/data/x y'" in line and "--epochs 3" in line  # without it, cifar100 would look in ./data
    assert "data_root=" not in line  # once, as the flag
    digits = tables.best_command_line(Config.from_flat(dataset="digits", data_root="/data").to_flat())
    assert "--data-root" not in digits


def test_best_command_line_from_a_frame_row(known):
    row = tables.best_trial(known)
    line = tables.best_command_line(tables.config_of(row))
    assert line == "lucir train --dataset digits --preset joint --base 4 --phases 3 --exemplars 5 --seed 0 --epochs 2"


def test_export_csv_markdown_latex(tmp_path, known):
    s = tables.summary_table(known)
    txt = tables.format_summary(s)
    paths = tables.export_table(txt, tmp_path / "t" / "summary", caption="A caption")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    back = pd.read_csv(paths[0])
    assert list(back["avg. inc. acc. CNN (%)"]) == ["62.00 ± 2.00", "70.00"]
    md = paths[1].read_text()
    assert md.startswith("A caption.") and "| lucir" in md and "62.00 ± 2.00" in md
    tex = paths[2].read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1
    assert r"$62.00$ & ${}\pm 2.00$" in tex                          # mean and std in two aligned columns
    assert r"\caption{A caption.}" in tex and r"\label{tab:summary}" in tex
    abl = tables.ablation_tables(frame_from_records([]))
    assert abl == {}
    tex2 = tables.to_latex(pd.DataFrame({"preset": ["cn_lf"], "v": [float("nan")]}))
    assert r"cn\_lf & --" in tex2                                    # escaped, NaN as an en dash
    assert not list((tmp_path / "t").glob(".*"))                     # no temporary files left behind


def test_param_importances_from_an_optuna_journal(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    exp = tmp_path / "exp"
    exp.mkdir()
    note_none = tables.param_importances(exp)
    assert note_none[0] is None and "no Optuna study" in note_none[1]
    storage = JournalStorage(JournalFileBackend(str(exp / "optuna_journal.log")))
    study = optuna.create_study(study_name="exp", storage=storage, direction="maximize")
    dists = {"margin": FloatDistribution(0.0, 1.0), "K": IntDistribution(1, 3)}
    study.add_trial(optuna.trial.create_trial(params={"margin": 0.5, "K": 2}, distributions=dists, value=60.0))
    imp, note = tables.param_importances(exp, "exp")
    assert imp is None and "fewer than 20" in note  # 1 complete trial: not shown, and the note says why
    for i in range(1, 19):  # the objective depends on margin only
        m, k = (i * 0.37) % 1.0, 1 + i % 3
        study.add_trial(optuna.trial.create_trial(params={"margin": m, "K": k}, distributions=dists,
                                                  value=50.0 + 20.0 * m))
    study.add_trial(optuna.trial.create_trial(params={"margin": 0.9, "K": 1}, distributions=dists,
                                              state=optuna.trial.TrialState.PRUNED))
    imp, note = tables.param_importances(exp, "exp")
    assert imp is None and "19 complete" in note  # 19 complete (the pruned one does not count)
    study.add_trial(optuna.trial.create_trial(params={"margin": 0.2, "K": 3}, distributions=dists, value=54.0))
    imp, note = tables.param_importances(exp, "exp")
    assert list(imp["parameter"]) == ["margin", "K"]
    assert imp["importance"].iloc[0] > 0.9 and imp["importance"].sum() == pytest.approx(1.0)
    assert (imp["std"] >= 0).all() and "20 complete trials" in note and "evaluator seeds" in note


def test_searched_params_come_from_the_domains_the_runner_wrote_as_data():
    import pandas as pd

    from analysis import tables

    df = pd.DataFrame({"margin": [0.1, 0.2], "K": [1, 2], "lambda_base": [1.0, 2.0], "eta_init": [1.0, 1.0]})
    meta = {"searched": {"margin": {"kind": "uniform", "low": 0.0, "high": 1.0, "log": False},
                         "lambda_base": {"kind": "loguniform", "low": 0.5, "high": 50.0, "log": True}},
            "param_space": {"K": "randint(1, 2) inclusive"}}  # the text form is not parsed when data exist
    assert tables.searched_params(df, meta) == ["lambda_base", "margin"]


# --------------------------------------------------------------------------- paper-ready tables (issue 10)
def _ladder_frame(tmp_path, presets=None, phase_counts=(3,)):
    from lucir.config import LADDER

    trials = []  # acc rises along the ladder, joint on top: 40 + 4 * rung + 2 * seed
    for rung, preset in enumerate(presets or LADDER):
        for p in phase_counts:
            for seed in (0, 1, 2):
                trials.append(make_trial(f"{preset}_{p}_{seed}", preset=preset, phases=p, seed=seed,
                                         acc=40.0 + 4 * rung - p + 2 * seed, forgetting=30.0 - 3 * rung))
    return _frame(tmp_path, trials)


def _unbold(cell):
    return cell[2:-2] if isinstance(cell, str) and cell.startswith("**") else cell


def _mean(cell):
    return float(_unbold(cell).split(" ± ")[0])


def test_ablation_uses_paper_names_and_check_marks_from_the_presets_switches(tmp_path):
    from lucir.config import LADDER, PRESETS

    (label, t), = tables.ablation_tables(_ladder_frame(tmp_path)).items()
    switch = {"CN": "cosine", "LF": "less_forget", "MR": "margin_ranking", "CBF": "cbf"}
    assert list(t.data["preset"]) == list(LADDER)
    assert len(set(t.display["method"])) == len(LADDER)                 # one name per preset, none raw
    assert not any("_" in m for m in t.display["method"])
    last = t.display["method"].iloc[-1]
    assert last == tables.paper_name("joint") and "upper bound" in last
    for preset, (_, row) in zip(LADDER, t.display.iterrows()):
        assert row["method"] == tables.PAPER_NAMES[preset]
        for col, sw in switch.items():
            assert (row[col] == tables.CHECK) == PRESETS[preset][sw], (preset, col)
            assert t.data.set_index("preset").loc[preset, col] == PRESETS[preset][sw]
    assert {"avg. inc. acc. CNN (%)", "avg. inc. acc. NME (%)"} <= set(t.display.columns)  # CNN and NME
    tex = tables.to_latex(t.display, caption="c")
    lucir = next(line for line in tex.splitlines() if line.startswith(tables.PAPER_NAMES["lucir"]))
    assert lucir.count(r"\checkmark") == 3                                # CN, LF, MR
    md = tables.to_markdown(t.display)
    assert md.count(tables.CHECK) == sum(PRESETS[p][s] for p in LADDER for s in switch.values())


def test_bold_marks_the_best_value_of_each_column_but_the_upper_bound(tmp_path):
    (_, t), = tables.ablation_tables(_ladder_frame(tmp_path, phase_counts=(2, 3))).items()
    d = t.display.set_index("method")
    acc_cols = [c for c in d.columns if c.startswith(("CNN", "NME"))]
    assert len(acc_cols) == 4
    joint = tables.paper_name("joint")
    for c in acc_cols:
        bolded = [m for m in d.index if str(d.loc[m, c]).startswith("**")]
        rivals = {m: _mean(d.loc[m, c]) for m in d.index if m != joint}
        assert bolded == [max(rivals, key=rivals.get)], c              # the best non-joint row, once
        assert _mean(d.loc[joint, c]) > max(rivals.values())            # joint is higher, yet not bold
        assert not str(d.loc[joint, c]).startswith("**")
    assert not any("**" in str(v) for v in t.data.to_numpy().ravel())   # the CSV holds plain values
    tex = tables.to_latex(t.display, caption="c")
    assert tex.count(r"\mathbf{") == 2 * 4 and "**" not in tex                # mean and std of 4 cells in bold
    s = tables.summary_table(_ladder_frame(tmp_path / "b"))
    disp, _ = tables.summary_display(s)
    disp = disp.set_index("method")
    f = "forgetting CNN (%)"                                             # lower is better
    best = [m for m in disp.index if disp.loc[m, f].startswith("**")]
    assert best == [min((m for m in disp.index if m != joint), key=lambda m: _mean(disp.loc[m, f]))]


def test_constant_columns_are_dropped_and_named_in_the_note(tmp_path):
    df = _ladder_frame(tmp_path, presets=("baseline", "lucir"))
    disp, note = tables.summary_display(tables.summary_table(df))
    for gone in ("dataset", "base", "base classes", "phases", "exemplars", "n", "excluded", "seeds"):
        assert gone not in disp.columns
    assert note.startswith("digits, B4, 3 phases, 5 exemplars/class") and "n = 3" in note
    assert list(disp.columns)[0] == "method" and len(disp.columns) == 1 + len(tables.ACC_METRICS)
    assert all("_" not in c for c in disp.columns)                       # headers as words
    (_, t), = tables.ablation_tables(df).items()
    assert "n" not in t.display.columns and "3 phases" in t.note and "n = 3" in t.note
    # a column that varies stays
    df2 = _ladder_frame(tmp_path / "b", presets=("baseline", "lucir"), phase_counts=(2, 3))
    disp2, note2 = tables.summary_display(tables.summary_table(df2))
    assert "phases" in disp2.columns and "phases" not in note2


def test_latex_has_a_table_environment_caption_above_label_and_word_headers(tmp_path):
    (_, t), = tables.ablation_tables(_ladder_frame(tmp_path)).items()
    paths = tables.export_table(t.data, tmp_path / "out" / "ablation_digits_b4", ("tex", "md"), display=t.display,
                                caption="Ablation: avg. inc. acc. (%)", note=t.note)
    tex = paths[0].read_text()
    lines = tex.splitlines()
    env = "table*" if r"\begin{table*}" in tex else "table"                # as wide as its columns need
    pos = {k: next(i for i, x in enumerate(lines) if x.startswith(k)) for k in
           (rf"\begin{{{env}}}", r"\centering", r"\caption{", r"\label{", r"\begin{tabular}", r"\toprule",
            rf"\end{{{env}}}")}
    assert (pos[rf"\begin{{{env}}}"] < pos[r"\centering"] < pos[r"\caption{"] < pos[r"\begin{tabular}"]
            < pos[rf"\end{{{env}}}"])
    assert pos[r"\caption{"] < pos[r"\label{"] < pos[r"\begin{tabular}"]
    assert r"\label{tab:ablation-digits-b4}" in tex
    assert t.note.split(";")[0] in lines[pos[r"\caption{"]]              # the note goes with the caption
    header = lines[pos[r"\toprule"] + 1]
    assert "_" not in header                                             # words, not snake_case (nor \_)
    assert r"(\%)" in header                                             # escaped
    md = paths[1].read_text()
    assert md.splitlines()[0].startswith("Ablation") and t.note in md
    # generic frames get word headers in LaTeX too
    tex2 = tables.to_latex(pd.DataFrame({"avg_inc_acc_cnn": [1.0], "phases_done": [2]}))
    head2 = tex2.split(r"\toprule")[1].split(r"\midrule")[0]             # words, broken over lines to fit
    assert "avg. inc." in head2 and "CNN (\\%)" in head2 and "phases" in head2 and "done" in head2
    assert "_" not in head2


def test_cost_table_counts_a_shared_base_phase_once(tmp_path):
    # three trials of one base key (cn, cn_lf, lucir share phase 0: same seed, cosine, eta_init, schedule)
    trials = [make_trial("t_cn", preset="cn", seed=0), make_trial("t_cnlf", preset="cn_lf", seed=0),
              make_trial("t_lucir", preset="lucir", seed=0)]
    trials[1]["base_cache"] = trials[2]["base_cache"] = "hit"          # t_cn trained it (miss)
    meta = {"runner": {"cpus_per_trial": 4.0, "gpus_per_trial": 0.5}}
    from lucir.config import Config

    keys = {Config.from_flat(t["config"]).base_key() for t in trials}
    assert len(keys) == 1
    df = _frame(tmp_path, trials, meta=meta)
    cost = tables.cost_table(df, meta)
    c = cost.data.set_index("preset")
    phase0, later = 1.5, 2.5 + 3.5 + 4.5                                 # the fixture's phase_seconds
    assert c.loc["cn", "base phases paid"] == 1 and c.loc["lucir", "base phases paid"] == 0
    assert c.loc["cn", "wall hours"] == pytest.approx((phase0 + later) / 3600)
    assert c.loc["cn_lf", "wall hours"] == pytest.approx(later / 3600)  # its phase 0 was a cache hit
    total = (phase0 + 3 * later) / 3600                                  # phase 0 once, not three times
    assert c["wall hours"].sum() == pytest.approx(total)
    assert c["CPU-hours"].sum() == pytest.approx(4 * total) and c["GPU-hours"].sum() == pytest.approx(0.5 * total)
    assert "GPU-hours" in cost.display.columns and "4 CPU" in cost.note
    # every trial a hit (the pre-training trained the base): still counted once
    for t in trials:
        t["base_cache"] = "hit"
    df2 = _frame(tmp_path / "b", trials, meta=meta)
    c2 = tables.cost_table(df2, meta).data
    assert c2["base phases paid"].sum() == 1 and c2["wall hours"].sum() == pytest.approx(total)
    # no runner recorded: 1 CPU, no GPU, said so; GPU column left out
    c3 = tables.cost_table(df2, {})
    assert "GPU-hours" not in c3.display.columns and "not recorded" in c3.note


def test_long_table_holds_every_metric_and_config_column(tmp_path, known):
    from analysis.results import CONFIG_FIELDS, EXTRA_METRICS, METRICS, VAL_METRICS

    long = tables.long_table(known)
    assert len(long) == len(known)                                       # trial x phase
    for c in (*METRICS, *EXTRA_METRICS, *VAL_METRICS, "trial_id", "phase", "classes_seen", "base_cache"):
        assert c in long.columns, c
    assert all(c in long.columns for c in CONFIG_FIELDS if c in known.columns)


# --------------------------------------------------------------------------- issue 18: bold by significance
def test_bold_marks_every_entry_not_significantly_below_the_best(tmp_path):
    from scipy import stats

    vals = {"lucir": [60.0, 62.0, 64.0], "cn": [59.5, 62.5, 63.0], "baseline": [50.0, 52.5, 53.0]}
    trials = [make_trial(f"{p}{s}", preset=p, seed=s, acc=v) for p, vs in vals.items() for s, v in enumerate(vs)]
    df = _frame(tmp_path, trials)
    disp, note = tables.summary_display(tables.summary_table(df))
    col = disp.set_index("method")["avg. inc. acc. CNN (%)"]
    lucir, cn, base = (tables.paper_name(p) for p in ("lucir", "cn", "baseline"))
    # cn - lucir = (-0.5, +0.5, -1): p far above 0.05 -> bold too; baseline is below in every seed -> not bold
    p_cn = stats.ttest_rel(vals["cn"], vals["lucir"]).pvalue
    p_base = stats.ttest_rel(vals["baseline"], vals["lucir"]).pvalue
    holm = sorted([p_cn, p_base])
    assert min(1, 2 * holm[0]) < 0.05 < max(min(1, 2 * holm[0]), min(1, holm[1]))
    assert col[lucir].startswith("**") and col[cn].startswith("**") and not col[base].startswith("**")
    assert "not significantly below the best" in note and "Holm" in note
    (_, abl), = tables.ablation_tables(df).items()
    acol = abl.display.set_index("method")["avg. inc. acc. CNN (%)"]
    assert acol[lucir].startswith("**") and acol[cn].startswith("**") and not acol[base].startswith("**")
    assert "Holm" in abl.note


def test_holm_step_down_and_not_below_best_helpers():
    from analysis.paired import holm, min_sign_flip_p, seeds_for_sign_flip

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])      # 3*0.01, max(2*0.03, .03), 0.04
    assert math.isnan(holm([float("nan"), 0.02])[0]) and holm([float("nan"), 0.02])[1] == pytest.approx(0.02)
    assert min_sign_flip_p(3) == 0.25 and seeds_for_sign_flip(1) == 6 and seeds_for_sign_flip(3) == 7
    s = pd.Series
    best = s([60.0, 62.0], index=[(0, 1993), (1, 1993)])
    one = s([10.0], index=[(0, 1993)])                                       # 1 pair: cannot be shown worse
    assert tables.not_below_best([best, one, None]) == [True, True, False]
    assert tables.not_below_best([best, None]) == [False, False]             # no rival: nothing bold
