"""Reproduction scoreboard (analysis/scoreboard.py): ours vs the published LUCIR numbers, and what rules a
comparison out."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from analysis_fixtures import make_trial, write_experiment

from analysis import scoreboard as sb
from analysis.results import TrialRecord, frame_from_records


def _cifar(trial_id: str, *, seed: int = 0, acc: float = 63.0, phases: int = 5, epochs: int = 160, **cfg) -> dict:
    """A finished CIFAR-100 B50 trial of ``epochs`` per phase (160: the reference schedule, milestones 80/120;
    fewer: milestones scaled like ``Config.from_flat`` does)."""
    doc = make_trial(trial_id, dataset="cifar100", base=50, phases=phases, seed=seed, acc=acc, **cfg)
    doc["config"].update(epochs=epochs, milestones=[epochs // 2, epochs * 3 // 4])  # make_trial trains 2
    return doc


def _frame(docs: list[dict]):
    return frame_from_records(TrialRecord(trial_id=d["trial_id"], config=d["config"], phases=d["phases"],
                                          status=d["status"]) for d in docs)


def test_published_file_loads_every_entry_has_a_source():
    entries = sb.load_published()
    doc = json.loads(sb.PUBLISHED_FILE.read_text())
    assert len(entries) == len(doc["entries"]) >= 7
    for e in entries:
        assert e["source"] in doc["sources"] and e["source_label"] and e["source_text"] and e["where"]
        assert e["metric"] in ("avg_inc_acc_cnn", "avg_inc_acc_nme") and e["method"]["preset"] == "lucir"
        p = e["protocol"]
        assert (p["dataset"], p["base_classes"], p["exemplars_per_class"], p["backbone"], p["epochs"]) == \
               ("cifar100", 50, 20, "resnet32", 160)
    got = {(e["protocol"]["phases"], e["metric"], e["source"]): (e["value"], e["std"]) for e in entries}
    assert got[(5, "avg_inc_acc_cnn", "hou2019")] == (63.42, None)
    assert got[(10, "avg_inc_acc_nme", "hou2019")] == (60.12, None)
    assert got[(5, "avg_inc_acc_cnn", "podnet2020_rerun")] == (64.01, 0.91)
    assert got[(25, "avg_inc_acc_cnn", "podnet2020_rerun")] == (57.57, 0.23)
    # the reference schedule of an entry is the trainer's CIFAR default
    ref = sb.reference_config(entries[0])
    assert ref["epochs"] == 160 and ref["milestones"] == (80, 120) and ref["class_mean_flip"] == "channels"


def test_published_entry_without_a_source_is_refused(tmp_path):
    doc = json.loads(sb.PUBLISHED_FILE.read_text())
    doc["entries"][0]["source"] = "nowhere"
    bad = tmp_path / "published.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(sb.PublishedError, match="has no source"):
        sb.load_published(bad)


def test_reduced_schedule_is_not_compared_and_the_epochs_are_named():
    docs = [_cifar(f"r{s}", seed=s, epochs=8) for s in range(2)]
    table, notes = sb.scoreboard(_frame(docs), {"kind": "ablate"})
    assert table.empty
    text = " ".join(notes)
    assert "8 epochs per phase instead of 160: not comparable" in text
    assert "milestones=(4, 6) instead of (80, 120)" in text                 # every difference is stated


def test_full_schedule_b50x5_lucir_is_compared_in_published_std_units():
    accs = [63.0, 64.0, 65.5]
    docs = [_cifar(f"f{s}", seed=s, acc=a) for s, a in enumerate(accs)]
    table, notes = sb.scoreboard(_frame(docs), {})
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    rerun = table[(table["entry"] == "podnet_rerun_cifar100_b50_p5_cnn")].iloc[0]
    assert rerun["n"] == 3 and rerun["ours_mean"] == pytest.approx(mean) and rerun["ours_std"] == pytest.approx(std)
    assert rerun["diff"] == pytest.approx(mean - 64.01)
    assert rerun["diff_in_std"] == pytest.approx((mean - 64.01) / 0.91)
    paper = table[(table["entry"] == "hou2019_cifar100_b50_p5_cnn")].iloc[0]
    assert paper["diff"] == pytest.approx(mean - 63.42) and math.isnan(paper["diff_in_std"])  # no published std
    # the fixture's NME is acc - 1; the default cifar100 flip is the reference's channel reversal: compared
    nme = table[(table["entry"] == "hou2019_cifar100_b50_p5_nme")].iloc[0]
    assert nme["ours_mean"] == pytest.approx(mean - 1) and nme["diff"] == pytest.approx(mean - 1 - 63.12)
    assert set(table["protocol"]) == {"cifar100 B50 5 phases 20/class"} and len(table) == 4  # no 10/25 phases
    assert not any("not compared" in n for n in notes)
    md = sb.display(table).to_string()
    assert "± 0.91 (n=3)" in md and f"{(mean - 64.01) / 0.91:+.2f}" in md


def test_other_exemplar_budget_and_flip_and_val_split_are_named():
    docs = [_cifar("e10", exemplars_per_class=10), _cifar("mir", seed=1, class_mean_flip="mirror"),
            _cifar("val", seed=2, val_fraction=0.1), _cifar("cnlf", seed=3, preset="cn_lf")]
    table, notes = sb.scoreboard(_frame(docs), {})
    text = "\n".join(notes)
    assert "10 exemplars per class instead of 20" in text
    assert "val_fraction=0.1: trained on 90% of the training images" in text
    assert "preset cn_lf instead of lucir (margin_ranking=False instead of True" in text
    # a mirror flip rules out NME only: its CNN is compared, its NME is not
    assert "class_mean_flip=mirror instead of channels (the published NME used the channel reversal)" in text
    assert set(table["metric"]) == {"avg_inc_acc_cnn"} and set(table["n"]) == {1}
    assert len(table) == 2                                                  # mirror group x (paper, re-run)


def test_other_class_order_is_compared_with_a_caveat_and_unfinished_trials_are_counted():
    docs = [_cifar("o7", class_order_seed=7), make_trial("late", dataset="cifar100", base=50, phases=5, done=2)]
    table, notes = sb.scoreboard(_frame(docs), {})
    assert len(table) == 4 and set(table["class_orders"]) == {"seed 7"}
    text = "\n".join(notes)
    assert "its class order is seed 1993 (ours: seed 7)" in text
    assert "1 trial of cifar100 B50 5 phases did not finish: not counted." in text


def test_nothing_comparable_says_what_ran():
    table, notes = sb.scoreboard(_frame([make_trial("d0")]), {"kind": "ablate"})
    assert table.empty
    assert "This ablate experiment ran digits B4 3 phases" in notes[0] and "cifar100 B50 with 5, 10, 25" in notes[0]


def test_report_has_the_scoreboard_section(tmp_path, capsys):
    from lucir.cli import main

    exp = write_experiment(tmp_path / "exp", [_cifar(f"f{s}", seed=s, acc=63.0 + s) for s in range(3)]
                           + [_cifar("short", epochs=8)])
    assert main(["report", str(exp), "--no-mlflow"]) == 0
    capsys.readouterr()
    report = exp / "report"
    text = (report / "index.md").read_text()
    assert "## Reproduction scoreboard" in text
    assert "[scoreboard.csv](tables/scoreboard.csv)" in text and "[scoreboard.md](tables/scoreboard.md)" in text
    assert (report / "tables" / "scoreboard.csv").is_file() and (report / "tables" / "scoreboard.md").is_file()
    section = text.split("## Reproduction scoreboard", 1)[1].split("\n## ", 1)[0]
    assert "64.00 ± 1.00 (n=3)" in section and "64.01 ± 0.91 (n=3)" in section
    assert "8 epochs per phase instead of 160: not comparable" in section
    # a digits experiment: the section lists why nothing is compared, and writes no scoreboard table
    exp2 = write_experiment(tmp_path / "exp2", [make_trial("d0")])
    assert main(["report", str(exp2), "--no-mlflow"]) == 0
    text2 = (exp2 / "report" / "index.md").read_text()
    assert "## Reproduction scoreboard" in text2 and "Nothing is comparable" in text2
    assert not (exp2 / "report" / "tables" / "scoreboard.csv").exists()
