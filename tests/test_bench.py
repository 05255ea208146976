"""``lucir bench --quick``: every section runs and is printed, the JSON is valid and every variant has a
positive images/s.  No timing is asserted (speed claims live in docs/PERFORMANCE.md, DESIGN §5)."""

from __future__ import annotations

import json
import math

import pytest

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.cli import main

SECTIONS = ("data", "train_base", "train_inc", "herding", "eval")


def test_bench_quick_runs_every_section_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench" / "bench.json"
    rc = main(["bench", "--quick", "--dataset", "digits", "--threads", "1", "--workers", "1",
               "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    for sec in SECTIONS:
        assert f"[{sec}]" in printed, f"section {sec} not printed"
    assert "Ratios" in printed and "Peak RSS" in printed
    assert "incremental step: tensor bf16 vs fp32 PIL/DataLoader" in printed

    res = json.loads(out.read_text())
    assert set(res["sections"]) == set(SECTIONS)
    expected = {
        "data": {"tensor ImageAugment", "PIL DataLoader (1 workers)"},
        "train_base": {"tensor fp32", "tensor bf16", "tensor channels_last", "tensor bf16+channels_last",
                       "PIL DataLoader fp32 (1 workers)"},
        "herding": {"tensor fp32: one batched pass", "tensor bf16: one batched pass",
                    "per-class DataLoader fp32 (1 workers, batch 128)"},
        "eval": {"tensor fp32", "tensor bf16", "tensor channels_last", "tensor bf16+channels_last",
                 "tensor fp32 (eval batch 100)", "PIL DataLoader fp32 (1 workers, batch 100)"},
    }
    expected["train_inc"] = expected["train_base"]
    for sec, names in expected.items():
        variants = res["sections"][sec]["variants"]
        assert {v["name"] for v in variants} == names
        for v in variants:
            assert v["images_per_s"] > 0 and math.isfinite(v["images_per_s"]), (sec, v)
            assert v["images"] > 0 and all(x > 0 for x in v["samples"])
    assert res["meta"]["dataset"] == "digits" and res["meta"]["quick"] is True
    assert res["meta"]["threads"] == 1
    assert res["rss"]["self_peak_mb"] > 0
    labels = {r["label"]: r for r in res["ratios"]}
    target = labels["incremental step: tensor bf16 vs fp32 PIL/DataLoader (issue target)"]
    assert target["ratio"] > 0 and target["target"] == 2.0 and isinstance(target["met"], bool)


def test_bench_rejects_unknown_section():
    with pytest.raises(SystemExit, match="unknown"):
        main(["bench", "--quick", "--dataset", "digits", "--threads", "1", "--sections", "train_base,nope"])
