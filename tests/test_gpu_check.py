"""``scripts/gpu_check.sh --dry-run``: every section of the GPU check (issue 20) runs on the CPU in tiny sizes,
summary.md names each one, the JSON files parse, and a section forced to time out is reported as timed out
while the others still complete.  No timing is asserted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("machine", "bench", "fused", "packed", "accuracy", "compile")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out / "out"), "--dry-run",
                        "--work", str(out / "work"), "--timeout", "fused=1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out / "out"


def test_every_section_is_in_the_summary_and_every_json_parses(dry_run):
    summary = (dry_run / "summary.md").read_text()
    for s in SECTIONS:
        assert f"| {s} |" in summary, s
    files = sorted(p.name for p in dry_run.iterdir())
    assert len(files) <= 8  # what the device tool brings back
    for p in dry_run.glob("*.json"):
        json.loads(p.read_text())
    status = json.loads((dry_run / "summary.json").read_text())["sections"]
    assert set(status) == set(SECTIONS)
    for s, st in status.items():
        assert st["command"] and st["seconds"] >= 0


def test_a_timed_out_section_is_reported_and_the_rest_completes(dry_run):
    status = json.loads((dry_run / "summary.json").read_text())["sections"]
    assert status["fused"]["status"] == "timed out"
    assert "| fused | timed out |" in (dry_run / "summary.md").read_text()
    for s in SECTIONS:
        if s != "fused":
            assert status[s]["status"] == "ok", (s, status[s])
    assert not (dry_run / "fused.json").exists()


def test_the_sections_figures(dry_run):
    bench = json.loads((dry_run / "bench.json").read_text())
    assert set(bench["sections"]) == {"data", "train_base", "train_inc", "herding", "eval"}
    assert all(v["images_per_s"] > 0 for s in bench["sections"].values() for v in s["variants"].values())
    packed = json.loads((dry_run / "packed.json").read_text())
    assert [r["N"] for r in packed["rows"]] == [1, 2]
    assert all(r["status"] == "ok" and r["processes"] == r["N"] and r["total_images_per_s"] > 0
               for r in packed["rows"])
    acc = json.loads((dry_run / "accuracy.json").read_text())
    assert acc["status"] == "ok" and acc["plan"]["epochs"] == 1 and "lucir train" in acc["command"]
    assert [p["phase"] for p in acc["phases"]] == [0, 1, 2, 3]  # digits: B4 + 3 phases
    assert all(0 <= p["acc_cnn"] <= 100 and 0 <= p["acc_nme"] <= 100 for p in acc["phases"])
    machine = json.loads((dry_run / "machine.json").read_text())
    assert machine["cpu_count"] >= 1 and machine["torch"]
    summary = (dry_run / "summary.md").read_text()
    assert "lucir train --dataset digits" in summary and "Average incremental accuracy" in summary


def test_plan_epochs_fits_the_time_left():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    bench = {"sections": {s: {"variants": {gc.VARIANT: {"images_per_s": ips}}}
                          for s, ips in (("train_base", 25000.0), ("train_inc", 16000.0))}}
    per_epoch = 25000 / 25000 + 32000 / 16000  # the base phase + 5 incremental phases of 5,000 + exemplars
    plan = gc.plan_epochs(bench, 60 + 100 * per_epoch / 0.7, dry=False)
    assert plan["epochs"] == 100 and plan["seconds_per_epoch"] == pytest.approx(per_epoch)
    assert "not the published 160" in plan["why"]
    assert gc.plan_epochs(bench, 10_000, dry=False)["epochs"] == 160
    assert gc.plan_epochs(None, 100, dry=False)["epochs"] == 0 and "guessed" in gc.plan_epochs(None, 100, False)["why"]
