"""index.html: one self-contained page beside index.md (figures embedded, tables, the command of every trial),
opened and screenshot in headless Chromium (skipped with the reason where no Chromium is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from analysis_fixtures import ablation_trials, search_with_confirm, write_experiment

from analysis.report import build_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.fixture(scope="module")
def ablation_report(tmp_path_factory):
    exp = write_experiment(tmp_path_factory.mktemp("html") / "abl", ablation_trials(), name="abl")
    return build_report(exp, mlflow=False, echo=lambda *_: None)


def test_index_html_is_self_contained_with_tables_figures_and_commands(ablation_report, tmp_path):
    page = (ablation_report.out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    pngs = [p for p in ablation_report.figures if p.suffix == ".png"]
    assert len(imgs) == len(pngs) and all(src.startswith("data:image/png;base64,") for src in imgs)  # embedded
    assert page.count("<figcaption>") == len(pngs)                        # every figure has its caption
    assert "<table>" in page and "<th>method</th>" in page
    assert page.count("lucir train --dataset digits") == 18               # one command per trial
    assert "Commands that reproduce every trial" in page
    # nothing else is needed to see it: copied alone it still holds every figure
    alone = tmp_path / "alone.html"
    shutil.copy(ablation_report.out / "index.html", alone)
    assert alone.read_text() == page
    assert (ablation_report.out / "index.md").read_text().count("[index.html](index.html)") == 1


def test_mlflow_runs_are_linked_when_the_folder_names_them(tmp_path):
    import json

    from analysis import html
    from analysis.results import read_experiment

    exp = search_with_confirm(tmp_path / "s")
    # an entry as tune.mlflow_sync writes it
    entry = {"run": "0123456789abcdef", "logged": 4, "params": True, "status": "TERMINATED"}
    (exp / "mlflow_runs.json").write_text(json.dumps({
        "http://mlflow.example:5000": {"parent": "p", "experiment_id": "7", "slots": {"s0000": entry}},
        "sqlite:////data/mlflow.db": {"parent": "q", "experiment_id": "1",
                                      "slots": {"s0001": {**entry, "run": "fe"}}}}))
    lines = "\n".join(html.reproduce_section(read_experiment(exp)))
    assert "[01234567](http://mlflow.example:5000/#/experiments/7/runs/0123456789abcdef)" in lines
    assert "`fe` in `sqlite:////data/mlflow.db`" in lines
    assert lines.count("| s0") == 9


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium; .ci/run does it "
                                             "where it can)")
def test_index_html_renders_in_headless_chromium(ablation_report, tmp_path):
    import numpy as np
    from matplotlib import image

    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
           "--window-size=1200,1600", "--user-data-dir=" + str(tmp_path / "profile"),
           (ablation_report.out / "index.html").as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    px = image.imread(str(shot))[..., :3]
    assert px.shape[0] == 1600 and px.shape[1] == 1200
    dark = (px.mean(axis=2) < 0.5).mean()
    assert 0.005 < dark < 0.5 and px.std() > 0.05                          # text and figures, not a blank page
    colours = np.unique((px.reshape(-1, 3) * 255).astype(int), axis=0)
    assert len(colours) > 50
