"""``lucir bench``: properties, not timings (speed claims live in docs/PERFORMANCE.md, DESIGN §5).

Every section and variant runs and gives a positive images/s, the JSON parses, ``--quick`` on digits runs
every section (the fused one too: its members' K fits the 2 classes per phase), a bad argument is one line
naming the allowed values."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.bench import SECTIONS, timed
from lucir.cli import main

GRID = {"fp32 nchw", "fp32 cl", "bf16 nchw", "bf16 cl"}  # the CPU's variants (tf32 is CUDA only)


def _bench(tmp_path, *extra):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--quick", "--dataset", "digits", "--threads", "1", "--json", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_quick_digits_every_section_every_variant(tmp_path, capsys):
    res = _bench(tmp_path, "--sections", ",".join(SECTIONS), "--fuse-sizes", "1,2")
    printed = capsys.readouterr().out
    assert set(res["sections"]) == set(SECTIONS)
    for sec in SECTIONS:
        assert f"[{sec}]" in printed
    expected = {"data": {"nchw", "cl"}, "fused": {"N=1 fused", "N=1 separate", "N=2 fused", "N=2 separate"}}
    for sec, body in res["sections"].items():
        assert set(body["variants"]) == expected.get(sec, GRID), sec
        for name, v in body["variants"].items():
            assert v["images_per_s"] > 0 and math.isfinite(v["images_per_s"]), (sec, name)
            assert all(x > 0 for x in v["samples"]) and v["images"] > 0 and v["peak_mem_mb"] > 0
            assert v["first_call_s"] >= 0 and v["compile_s"] is None
        if sec != "data":  # FLOPs by FlopCounterMode, share of the (measured) peak
            assert body["gflop_per_image"] > 0
            assert all(0 < v["share_of_peak"] for v in body["variants"].values()), sec
    # the incremental step also runs the frozen model: more FLOPs per image than the base step
    assert res["sections"]["train_inc"]["gflop_per_image"] > res["sections"]["train_base"]["gflop_per_image"]
    fused = {r["N"]: r for r in res["sections"]["fused"]["fused"]}
    assert set(fused) == {1, 2} and all(r["ratio"] > 0 and r["fused"] > 0 and r["separate"] > 0
                                        for r in fused.values())
    batch, steps = res["meta"]["batch_size"], res["meta"]["steps"]
    assert res["sections"]["fused"]["variants"]["N=2 fused"]["images"] == 2 * batch * steps  # per trial
    meta = res["meta"]
    assert meta["dataset"] == "digits" and meta["threads"] == 1 and meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__ and meta["cpu_count"] >= 1 and meta["peak_gflops"]["fp32"] > 0


def test_only_and_stated_peak(tmp_path):
    res = _bench(tmp_path, "--sections", "train_base,eval", "--only", "bf16 cl", "--peak-gflops", "10")
    for sec in ("train_base", "eval"):
        (name, v), = res["sections"][sec]["variants"].items()
        assert name == "bf16 cl"
        assert v["share_of_peak"] == pytest.approx(v["images_per_s"] * res["sections"][sec]["gflop_per_image"] / 10)
    assert res["meta"]["peak_gflops"]["bf16"] == 10 and "stated" in res["meta"]["peak_source"]


@pytest.mark.parametrize("args, names", [
    (["--sections", "train_base,nope"], ["--sections 'nope'", "data,train_base,train_inc,herding,eval,fused"]),
    (["--sections", "fused", "--fuse-sizes", "0,2"], ["--fuse-sizes", "integers >= 1"]),
    (["--sections", "fused", "--fuse-variant", "fp16 cl"], ["--fuse-variant", "fp32|tf32|bf16"]),
])
def test_bad_argument_is_one_line_naming_the_allowed_values(args, names, capsys):
    assert main(["bench", "--quick", "--dataset", "digits", "--threads", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lucir bench: error:")
    for n in names:
        assert n in err


def test_timed_warms_up_interleaves_and_takes_the_median():
    calls = []

    def variant(name, images):
        def run():
            calls.append(name)
            return images
        return run

    res = timed({"a": variant("a", 10), "b": variant("b", 20)}, torch.device("cpu"), rounds=3, log=lambda m: None)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one untimed call each, then interleaved rounds
    for name, images in (("a", 10), ("b", 20)):
        r = res[name]
        assert len(r["samples"]) == 3 and r["images"] == images
        assert r["images_per_s"] == sorted(r["samples"])[1] and r["first_call_s"] >= 0


@pytest.mark.slow
def test_compile_variant_reports_compile_time(tmp_path):
    res = _bench(tmp_path, "--sections", "train_base", "--compile", "--only", "fp32 nchw compile")
    (name, v), = res["sections"]["train_base"]["variants"].items()
    assert name == "fp32 nchw compile" and v["images_per_s"] > 0 and v["compile_s"] is not None
