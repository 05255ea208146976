"""``lucir report`` end to end on synthetic experiment folders: files, links, messages, MLflow artifacts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from analysis_fixtures import (ablation_trials, empty_mlflow_db, fresh_mlflow, make_trial, write_experiment,
                               write_mlflow)

from lucir.cli import main


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "mlflow_template"  # one migrated store per test session
    base.mkdir(exist_ok=True)
    return empty_mlflow_db(base)


def _links(index: Path) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", index.read_text())


def test_report_end_to_end_logged_to_the_mlflow_parent_run(tmp_path, mlflow_template, capsys):
    trials = ablation_trials()
    trials.append(make_trial("late", preset="lucir", seed=7, phases=3, done=2))                    # RUNNING
    trials.append(make_trial("boom", preset="cn", seed=8, phases=2, done=1, status="ERROR",
                             error="RuntimeError: CUDA out of memory\ntraceback ..."))
    exp = tmp_path / "exp"
    uri = fresh_mlflow(mlflow_template, exp)
    parent = write_mlflow(uri, "exp", trials, tmp_path / "mlartifacts")
    write_experiment(exp, trials, meta={"mlflow_uri": uri, "parent_run_id": parent})

    assert main(["report", str(exp)]) == 0
    out = capsys.readouterr().out
    assert "| Baseline (FC + KD)" in out and "50.00 ± 2.00" in out          # the main table on stdout
    assert "report logged as artifacts" in out

    report = exp / "report"
    index = report / "index.md"
    links = _links(index)
    assert links and all((report / link).is_file() for link in links)      # every link resolves
    for name in ("tables/summary.csv", "tables/summary.md", "tables/summary.tex",
                 "tables/ablation_digits_b4_5_class.tex", "tables/trials.csv", "tables/long.csv",
                 "tables/cost.csv", "tables/cost.md", "tables/cost.tex",
                 "figures/ablation_digits_b4_5_class.png", "figures/acc_digits_b4_3_phases_5_class.png"):
        assert name in links, name
    tex = (report / "tables" / "summary.tex").read_text()
    assert all(tex.count(r) == 1 for r in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert tex.index(r"\caption{") < tex.index(r"\begin{tabular}") and r"\label{tab:exp-summary}" in tex
    abl = (report / "tables" / "ablation_digits_b4_5_class.tex").read_text()
    assert r"\begin{table" in abl and abl.index(r"\caption{") < abl.index(r"\begin{tabular}")
    rows = {line.split(" & ")[0]: line.split(" & ") for line in abl.splitlines() if " & " in line}
    lucir = rows["LUCIR (CN + LF + MR)"]                                    # paper name, CN LF MR checked
    assert lucir[1:5] == [r"\checkmark", r"\checkmark", r"\checkmark", ""]
    assert lucir[5:7] == [r"$\mathbf{60.00}$", r"${}\pm\mathbf{2.00}$"]     # best rung (2 phases), bold
    assert r"$\mathbf{59.00}$" in lucir
    assert "_" not in abl.split(r"\toprule")[1].split(r"\midrule")[0]      # word headers
    import pandas as pd

    long = pd.read_csv(report / "tables" / "long.csv")
    assert len(long) == sum(len(t["phases"]) or 1 for t in trials) and "val_avg_inc_acc_cnn" in long.columns
    text = index.read_text()
    assert "2 of 20 trials did not finish" in text
    assert "| late" in text and "RUNNING" in text and f"lucir resume {exp}" in text
    assert "| boom" in text and "CUDA out of memory" in text and "traceback" not in text
    assert "Best configuration" not in text and "Winner" not in text        # an ablation has no best config
    assert "`class_mean_flip=none`" in text                                  # how the NME means were made

    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    logged = {f.path for f in c.list_artifacts(parent, "report")}
    assert {"report/index.md", "report/tables", "report/figures"} <= logged
    assert "report/tables/summary.tex" in {f.path for f in c.list_artifacts(parent, "report/tables")}


def test_search_report_has_top_configs_importances_and_search_plots(tmp_path, capsys):
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    exp = tmp_path / "search"
    trials, dists = [], {"margin": FloatDistribution(0.0, 1.0), "K": IntDistribution(1, 2)}
    storage = None
    for i in range(6):
        m, k = round(0.15 * i + 0.05, 2), 1 + i % 2
        trials.append(make_trial(f"s{i}", margin=m, K=k, acc=50.0 + 10 * m))
    meta = {"param_space": {"margin": "uniform(0.0, 1.0)", "K": "randint(1, 2) inclusive", "preset": "lucir"},
            "optuna_study": "search", "mlflow_uri": None}
    write_experiment(exp, trials, name="search", kind="search", meta=meta)
    storage = JournalStorage(JournalFileBackend(str(exp / "optuna_journal.log")))
    study = optuna.create_study(study_name="search", storage=storage, direction="maximize")
    for t in trials:
        c = t["config"]
        study.add_trial(optuna.trial.create_trial(params={"margin": c["margin"], "K": c["K"]}, distributions=dists,
                                                  value=t["phases"][-1]["avg_inc_acc_cnn"]))
    assert main(["report", str(exp), "--out", str(tmp_path / "rep"), "--formats", "md,tex"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("|   rank | trial ")               # a search prints its top configs
    assert "avg. inc. acc. CNN (%)" in out.splitlines()[0] and "preset" not in out.splitlines()[0]  # constant
    assert "MLflow: not logged" in out
    rep = tmp_path / "rep"
    names = {p.relative_to(rep).as_posix() for p in rep.rglob("*") if p.is_file()}
    assert {"tables/search_top.md", "tables/search_top.tex",
            "figures/search_history.png", "figures/param_slices.png"} <= names
    assert "tables/param_importances.md" not in names                      # 6 complete trials: not shown
    assert not any(n.endswith(".csv") for n in names)                         # --formats md,tex
    assert not any("ablation" in n or "curve" in n for n in names)            # a search has no ladder
    text = (rep / "index.md").read_text()
    assert "6 complete trial(s); fANOVA importances of fewer than 20" in text  # ... and the report says why
    assert "--set margin=0.8" in text                                        # the best trial, s5
    assert all((rep / link).is_file() for link in _links(rep / "index.md"))


def test_empty_experiment_exits_2_with_a_clear_message(tmp_path, capsys):
    exp = write_experiment(tmp_path / "exp", [])
    assert main(["report", str(exp), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "has no trials yet" in err and "nothing to report" in err
    assert not (exp / "report").exists() and not list(exp.glob(".report*"))
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not an experiment folder" in capsys.readouterr().err
    assert main(["report", str(exp), "--formats", "pdf"]) == 2
    assert "allowed" in capsys.readouterr().err


def test_partial_experiment_reports_what_is_missing(tmp_path, capsys):
    trials = [make_trial("a", seed=0, done=2), make_trial("b", seed=1, done=0, status="ERROR", error="killed")]
    exp = write_experiment(tmp_path / "exp", trials, meta={"parent_run_id": "0123abcd"})
    assert main(["report", str(exp)]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 trials unfinished or failed" in out
    assert "MLflow: not logged" in out and "does not exist" in out            # store absent: skipped, not created
    assert not (exp / "mlflow.db").exists()
    text = (exp / "report" / "index.md").read_text()
    assert "2 of 2 trials did not finish every phase" in text
    assert "| a " in text and "| b " in text and "killed" in text
    assert "Best configuration" not in text
    summary = (exp / "report" / "tables" / "summary.md").read_text()
    from analysis.tables import ACC_METRICS

    assert summary.splitlines()[-1].count(" – |") == len(ACC_METRICS)       # no finished seed: dashes
    assert "n = 0" in summary.splitlines()[0]                                # constant columns: in the note


def test_report_is_replaced_atomically(tmp_path, capsys):
    exp = write_experiment(tmp_path / "exp", [make_trial("a")])
    out = tmp_path / "rep"
    assert main(["report", str(exp), "--out", str(out), "--no-mlflow"]) == 0
    (out / "stale.txt").write_text("from an older report")
    assert main(["report", str(exp), "--out", str(out), "--no-mlflow"]) == 0
    assert not (out / "stale.txt").exists() and (out / "index.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "rep"]      # no temporary folders left
    assert "MLflow: not logged (--no-mlflow)" in capsys.readouterr().out


# --------------------------------------------------------------------------- issue 18
def test_search_report_ranks_by_validation_and_reports_the_confirm_stage_as_a_paired_test(tmp_path, capsys):
    import pandas as pd
    from analysis_fixtures import search_with_confirm

    exp = search_with_confirm(tmp_path / "search")
    assert main(["report", str(exp), "--no-mlflow"]) == 0
    capsys.readouterr()
    rep = exp / "report"
    top = pd.read_csv(rep / "tables" / "search_top.csv")
    assert list(top["trial_id"])[:3] == ["s0002", "s0005", "s0003"]        # by validation: 63, 62, 61
    assert "s0007" != top["trial_id"].iloc[0]                                # the test-best trial (70) is not first
    assert "acc_cnn" not in top.columns and "avg_inc_acc_nme" not in top.columns  # no test numbers in the search
    assert "s0008" not in set(top["trial_id"])                               # pruned: never a winner
    names = {p.relative_to(rep).as_posix() for p in rep.rglob("*") if p.is_file()}
    for f in ("tables/confirm_trials.csv", "tables/confirm_trials.md", "tables/confirm_trials.tex",
              "tables/confirm_cost.csv", "tables/confirm_long.csv", "tables/confirm_candidates.tex",
              "figures/parallel.png", "figures/val_vs_test.png", "index.html"):
        assert f in names, f
    assert not any("optuna_timeline" in n or "optuna_intermediate" in n for n in names)
    assert any(n.startswith("figures/val_acc_") for n in names)              # a search draws validation curves
    assert not any(n.startswith("figures/acc_") for n in names)
    text = (rep / "index.md").read_text()
    assert "Confirm stage: 9 trials" in text
    assert "top-1 is not distinguishable from the paper defaults at n = 3 seeds" in text
    assert "the smallest attainable at n = 3 is 0.25" in text and "Holm-corrected over 2 comparisons" in text
    assert "needs 7 seeds to reach p < 0.05" in text                         # 2/2^7 < 0.05/2
    long = pd.read_csv(rep / "tables" / "confirm_long.csv")
    assert len(long) == 9 * 4                                                # 9 trials x 4 phases


def test_confirm_verdict_is_significant_with_enough_seeds(tmp_path):
    from analysis_fixtures import search_with_confirm

    from analysis.confirm import confirm_summary

    exp = search_with_confirm(tmp_path / "s", seeds=3)
    v = confirm_summary(exp)["verdict"]
    assert v["significant"] is False and "not distinguishable" in v["text"] and v["test"]["n"] == 3
    assert v["test"]["p_min"] == 0.25
    from scipy import stats

    d = [1.5, -0.4, 0.8]
    assert v["test"]["p_t"] == pytest.approx(stats.ttest_rel([57.5, 56.6, 57.2], [56.0, 57.0, 56.4]).pvalue)
    assert v["test"]["mean_diff"] == pytest.approx(sum(d) / 3)


def test_main_table_has_the_published_rows_and_a_column_group_per_phase_count(tmp_path):
    from analysis import paper
    from analysis.results import load_experiment

    trials = [make_trial(f"{p}{s}", preset=p, seed=s, dataset="cifar100", base=50, phases=5, epochs=1,
                         acc=10.0 + i + s) for i, p in enumerate(("cn", "lucir")) for s in range(3)]
    df = load_experiment(write_experiment(tmp_path / "c", trials))
    (label, t), = paper.main_table(df).items()
    d = t.display.set_index("method")
    assert list(d.index[:2]) == ["CN", "LUCIR"]
    assert d.loc["LUCIR", "5 phases: CNN"] == "12.00 ± 1.00"
    pub, pod = "LUCIR [Hou 2019]", "LUCIR [PODNet re-run]"
    assert d.loc[pub, "5 phases: CNN"] == "63.42" and d.loc[pub, "10 phases: NME"] == "60.12"
    assert d.loc[pod, "25 phases: CNN"] == "57.57 ± 0.23" and d.loc[pod, "25 phases: NME"] == "56.82 ± 0.19"
    assert d.loc["LUCIR", "25 phases: CNN"] == "–"                           # not run
    assert "reduced schedule: 1 epoch per phase (published: 160)" in t.note
    (_, last), = paper.main_table(df, kind="last").items()
    assert last.display.set_index("method").loc["LUCIR", "5 phases: CNN"] == "12.00 ± 1.00"


def test_main_table_names_the_50_phase_rerun_in_its_note(tmp_path):
    from analysis import paper
    from analysis.results import load_experiment

    df = load_experiment(write_experiment(tmp_path / "c", [make_trial("a", dataset="cifar100", base=50, phases=5)]))
    (_, t), = paper.main_table(df).items()
    assert "50 phases" not in " ".join(t.display.columns)
    assert "also published for 50 phases" in t.note and "CNN 49.30 ± 0.32" in t.note and "NME 48.57 ± 0.37" in t.note
