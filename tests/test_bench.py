"""``lucir bench --quick``: every section runs and is printed, the JSON is valid and every variant has a
positive images/s.  No timing is asserted (speed claims live in docs/PERFORMANCE.md, DESIGN §5)."""

from __future__ import annotations

import json
import math

import pytest

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.bench import BEFORE, PILSource, synthetic_dataset
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
        "train_base": {BEFORE, "tensor fp32", "tensor bf16", "tensor channels_last", "tensor bf16+channels_last",
                       "PIL DataLoader fp32 (1 workers)"},
        "herding": {"tensor fp32: one batched pass", "tensor bf16: one batched pass",
                    "per-class DataLoader fp32 (1 workers, batch 128)"},
        "eval": {"tensor fp32", "tensor bf16", "tensor channels_last", "tensor bf16+channels_last",
                 "tensor fp32 (eval batch 100)", "tensor fp32 (eval batch 512)",
                 "PIL DataLoader fp32 (1 workers, batch 100)"},
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
    # the compute limit: FLOPs of one step (FlopCounterMode) over a measured fp32 peak
    meta = res["meta"]
    assert meta["peak_gflops"] > 0 and meta["loadavg_start"] and meta["default_variant"] == "tensor channels_last"
    for sec in ("train_base", "train_inc"):
        s = res["sections"][sec]
        assert s["gflop_per_image"] > 0 and s["limit_images_per_s"] == pytest.approx(
            meta["peak_gflops"] / s["gflop_per_image"])
        issue8 = [r for r in res["ratios"] if r["section"] == sec and r.get("target") == 2.0 and r["b"] == BEFORE]
        assert len(issue8) == 1 and issue8[0]["a"] == "tensor channels_last"
    # the incremental step also runs the frozen model's forward: more FLOPs per image than the base step
    assert res["sections"]["train_inc"]["gflop_per_image"] > res["sections"]["train_base"]["gflop_per_image"]


def test_bench_profile_and_stated_peak(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--quick", "--dataset", "digits", "--threads", "1", "--workers", "1", "--sections",
               "train_base", "--only", "tensor fp32", "--profile", "3", "--peak-gflops", "10", "--json", str(out)])
    assert rc == 0
    assert "profile of tensor fp32" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["meta"]["peak_gflops"] == 10.0
    ops = res["sections"]["train_base"]["profiles"]["tensor fp32"]
    assert len(ops) == 3 and all(o["self_ms_per_step"] >= 0 and 0 <= o["share"] <= 1 for o in ops)


def test_bench_fused_sections(tmp_path, capsys):
    """``--sections fused``: fused N arrays vs N separate trials per N, per-trial images/s, paired ratios."""
    out = tmp_path / "fused.json"
    rc = main(["bench", "--quick", "--dataset", "digits", "--threads", "1", "--sections", "fused", "--fuse-sizes",
               "1,2", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "[fused_base]" in printed and "[fused_inc]" in printed and "[train_base]" not in printed
    assert "fused incremental step, N=2: fused 2 / 2 separate" in printed
    res = json.loads(out.read_text())
    assert set(res["sections"]) == {"fused_base", "fused_inc"}
    assert res["meta"]["fuse_sizes"] == [1, 2] and res["meta"]["fuse_channels_last"] is True
    expected = {"fused_base": {"fused 1", "1 separate", "fused 2", "2 separate"},
                "fused_inc": {"fused 1", "fused 1 stacked", "1 separate", "fused 2", "fused 2 stacked", "2 separate"}}
    batch = res["meta"]["batch_size"] * res["meta"]["steps"]
    for sec, names in expected.items():
        s = res["sections"][sec]
        assert {v["name"] for v in s["variants"]} == names
        for v in s["variants"]:
            assert v["images_per_s"] > 0 and math.isfinite(v["images_per_s"]), (sec, v)
            n = int(v["name"].split()[1 if v["name"].startswith("fused") else 0])
            assert v["images"] == batch * n  # per-trial images: steps x batch x N
        per_n = {r["N"]: r for r in s["per_n"]}
        assert set(per_n) == {1, 2}
        assert per_n[2]["fused_images_per_s"] > 0 and per_n[2]["separate_images_per_s"] > 0
        assert per_n[2]["fused_vs_separate"] > 0
        ratios = {(r["a"], r["b"]): r["ratio"] for r in res["ratios"] if r["section"] == sec}
        assert ratios[("fused 2", "2 separate")] > 0 and ratios[("fused 1", "1 separate")] > 0
        if sec == "fused_inc":
            assert ratios[("fused 2 stacked", "2 separate")] > 0 and ratios[("fused 2", "fused 2 stacked")] > 0
            assert per_n[2]["stacked_vs_separate"] > 0


def test_pil_path_is_the_reference_pipeline():
    """The reference's CIFAR-100 transforms (class_incremental_cosine_cifar100.py): RandomCrop(32, padding=4),
    RandomHorizontalFlip(), ToTensor(), Normalize with its mean/std; eval: ToTensor(), Normalize; the
    DataLoader shuffles the training set with 2 workers at batch 128 and pins no memory."""
    import torch
    from torchvision import transforms as T

    data = synthetic_dataset("cifar100", 2, 1)
    pil = PILSource(data, torch.device("cpu"), workers=2)
    train = pil.train.transform.transforms
    assert [type(t) for t in train] == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert train[0].size == (32, 32) and train[0].padding == 4 and train[0].fill == 0
    assert train[1].p == 0.5
    assert tuple(train[3].mean) == (0.5071, 0.4866, 0.4409) and tuple(train[3].std) == (0.2009, 0.1984, 0.2023)
    assert [type(t) for t in pil.test.transform.transforms] == [T.ToTensor, T.Normalize]
    loader = pil.loader(pil.train, torch.arange(10), 128, shuffle=True)
    assert loader.batch_size == 128 and loader.num_workers == 2 and not loader.pin_memory
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)


def test_bench_rejects_unknown_section():
    with pytest.raises(SystemExit, match="unknown"):
        main(["bench", "--quick", "--dataset", "digits", "--threads", "1", "--sections", "train_base,nope"])
    with pytest.raises(SystemExit, match="fuse-sizes"):
        main(["bench", "--quick", "--dataset", "digits", "--threads", "1", "--sections", "fused", "--fuse-sizes",
              "0,2"])
