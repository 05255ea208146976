"""Hyperparameter protocols (tune/protocols.py): what each protocol's objective may touch is asserted, not
assumed: the first-task objective reads no image of a later class (poisoning every later class's images
leaves it bit-identical), a transfer search never evaluates on its tuning scenario; and end to end on
digits, the three protocols side by side in `lucir report --compare`."""

from __future__ import annotations

import dataclasses
import json

import pytest

import lucir
from lucir import record
from lucir.config import ConfigError
from tune.protocols import first_task_stats, plan
from tune_fixtures import records, run_lucir

FIXED = {"dataset": "digits", "preset": "lucir", "epochs": 2, "val_fraction": 0.2}


def test_plans_of_the_three_protocols_and_their_refusals():
    assert plan("stream", FIXED, [], [], 1) == {"protocol": "stream", "tune": {}, "last_phase": None, "evaluate": [{}]}
    assert plan("first-task", FIXED, [], [], 2)["last_phase"] == 2
    t = plan("transfer", FIXED, [], [], 1)
    assert t["evaluate"] == [{"class_order_seed": 1}, {"class_order_seed": 2}]  # never the tuning order 1993
    t = plan("transfer", FIXED, ["class_order_seed=1"], ["class_order_seed=1993,2", "exemplars_per_class=5,10"], 1)
    assert t["tune"] == {"class_order_seed": 1} and len(t["evaluate"]) == 4
    for args, msg in ((("transfer", FIXED, [], ["class_order_seed=1993"], 1), "is the tuning scenario itself"),
                      (("transfer", FIXED, ["class_order_seed=5"], ["class_order_seed=5,6"], 1), "tuning scenario"),
                      (("transfer", FIXED, ["class_order_seed=1,2"], [], 1), "one value per field"),
                      (("stream", FIXED, [], ["class_order_seed=1"], 1), "belong to --protocol transfer"),
                      (("first-task", FIXED, [], [], 3), r"--first-task-phases 3 is invalid: allowed 1..2"),
                      (("nosuch", FIXED, [], [], 1), "allowed one of"),
                      (("transfer", FIXED, [], ["phases=4"], 1), "phases=4 is invalid")):
        with pytest.raises(ConfigError, match=msg):
            plan(*args)


def test_the_first_task_objective_reads_no_image_of_a_later_class():
    """Every image (train and test) of the classes after the first incremental phase replaced by noise: the
    phases a first-task search trains (0..1) give bit-identical results, validation included."""
    import torch

    from lucir.data import class_order, load_dataset_for

    base = lucir.Config.from_flat(FIXED)
    last = plan("first-task", FIXED, [], [], 1)["last_phase"]
    stats = first_task_stats(base, last)
    assert stats and stats["mean"] != list(load_dataset_for(base).mean)  # the later classes' pixels are not in it
    cfg = lucir.Config.from_flat({**FIXED, **stats, "threads": 1})
    clean = load_dataset_for(cfg)
    later = torch.as_tensor(class_order(10, 1993)[cfg.protocol.seen_classes(last):])
    g = torch.Generator().manual_seed(0)

    def poison(x, y):
        x = x.clone()
        m = torch.isin(y, later)
        x[m] = torch.randint(0, 256, x[m].shape, generator=g, dtype=torch.uint8)
        return x

    dirty = dataclasses.replace(clean, train_x=poison(clean.train_x, clean.train_y),
                                test_x=poison(clean.test_x, clean.test_y))
    assert not torch.equal(dirty.train_x, clean.train_x)

    def first_task(data):
        out = []
        for result, _ in lucir.run(cfg, data=data):
            out.append(result.metrics())
            if result.phase == last:
                break
        return out

    a, b = first_task(clean), first_task(dirty)
    assert len(a) == last + 1 and json.dumps(a, default=str) == json.dumps(
        [{**r, "train_seconds": a[i]["train_seconds"], "phase_seconds": a[i]["phase_seconds"]} for i, r in enumerate(b)],
        default=str)
    assert a[-1][record.VAL_OBJECTIVE] == b[-1][record.VAL_OBJECTIVE]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_first_task_and_transfer_searches_tune_and_evaluate_where_they_say(tmp_path):
    common = ["--trials", "3", "--set", "epochs=1", "--confirm-top", "1", "--confirm-seeds", "1", "--num-cpus", "2",
              "--no-mlflow"]
    ft, tr = tmp_path / "first-task", tmp_path / "transfer"
    for proto, out in (("first-task", ft), ("transfer", tr)):
        r = run_lucir(["search", "--protocol", proto, *common, "--out", str(out)], tmp_path, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # first-task: every search slot stopped after phase 1; the confirm stage ran the whole stream
    for rec in records(ft).values():
        assert rec["status"] == "TERMINATED" and len(rec["phases"]) == 2 and rec["num_phases"] == 1
        assert rec["phases"][-1]["classes_seen"] == 6  # base 4 + the first phase's 2: no later class
    conf = records(ft / record.CONFIRM_DIR)
    assert conf and all(len(r["phases"]) == 4 and r["config"]["mean"] == records(ft)["s0000"]["config"]["mean"]
                        for r in conf.values())
    # transfer: tuned on order 1993, evaluated only on the others
    assert {r["config"]["class_order_seed"] for r in records(tr).values()} == {1993}
    assert {r["config"]["class_order_seed"] for r in records(tr / record.CONFIRM_DIR).values()} == {1, 2}
    r = run_lucir(["report", "--compare", str(ft), str(tr), "--out", str(tmp_path / "cmp")], tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (tmp_path / "cmp" / "protocols.md").read_text()
    assert "| first-task |" in md.replace("| first-task   |", "| first-task |") or "first-task" in md
    import pandas as pd

    df = pd.read_csv(tmp_path / "cmp" / "protocols.csv")
    assert list(df["protocol"]) == ["first-task", "transfer"] and list(df["eval pairs"]) == [1, 2]
