"""``lucir train`` on digits: outputs, resume, and bad input failing before any training (DESIGN §1, §7)."""

from __future__ import annotations

import csv
import json

import pytest

import lucir
import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.checkpoint import load_state
from lucir.cli import main

pytestmark = pytest.mark.slow

ARGS = ["train", "--dataset", "digits", "--epochs", "2", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted ``lucir train`` run (with its progress bar): (output folder, exit code)."""
    out = tmp_path_factory.mktemp("train")
    return out, main([a for a in ARGS if a != "--quiet"] + ["--out", str(out)])


def test_train_writes_results_json_csv_and_state(finished, capsys):
    out, rc = finished
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert [p["phase"] for p in res["phases"]] == [0, 1, 2, 3]
    assert res["config"]["epochs"] == 2 and res["config"]["dataset"] == "digits"
    assert len(res["acc_matrix_cnn"]) == 4 and [len(r) for r in res["acc_matrix_cnn"]] == [1, 2, 3, 4]
    last = res["phases"][-1]
    for k in ("acc_cnn", "acc_nme", "acc_old_cnn", "acc_new_cnn", "avg_inc_acc_cnn", "avg_inc_acc_nme",
              "forgetting_cnn", "train_seconds", "classes_seen"):
        assert k in last
    assert last["avg_inc_acc_cnn"] == pytest.approx(sum(p["acc_cnn"] for p in res["phases"]) / 4)
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["phase"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[-1]["acc_cnn"]) == pytest.approx(last["acc_cnn"])
    state = load_state(out / "state.pt")
    assert state["phase"] == 3 and state["acc_cnn"] == res["acc_matrix_cnn"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_results_json_is_strict_json(finished):
    out, _ = finished

    def reject(name):
        raise ValueError(f"{name} is not JSON")

    json.loads((out / "results.json").read_text(), parse_constant=reject)


def test_interrupted_train_resumes_to_the_same_result(finished, tmp_path, monkeypatch, capsys):
    out_full, _ = finished
    real_run = lucir.run

    def killed_after_phase_1(cfg, state=None, **kw):
        for res, st in real_run(cfg, state, **kw):
            yield res, st
            if res.phase == 1:
                raise KeyboardInterrupt  # the process dies while phase 2 would start

    out = tmp_path / "run"
    monkeypatch.setattr(lucir, "run", killed_after_phase_1)
    with pytest.raises(KeyboardInterrupt):
        main(ARGS + ["--out", str(out)])
    monkeypatch.undo()
    assert load_state(out / "state.pt")["phase"] == 1
    assert [p["phase"] for p in json.loads((out / "results.json").read_text())["phases"]] == [0, 1]
    capsys.readouterr()

    # the run's own config.json supplies the configuration: --out and --resume are enough
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert "after phase 1" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    full = json.loads((out_full / "results.json").read_text())
    assert [p["phase"] for p in res["phases"]] == [0, 1, 2, 3]
    assert res["acc_matrix_cnn"] == full["acc_matrix_cnn"]
    assert res["acc_matrix_nme"] == full["acc_matrix_nme"]
    strip = lambda ps: [{k: v for k, v in p.items() if not k.endswith("seconds")} for p in ps]  # noqa: E731
    assert strip(res["phases"]) == strip(full["phases"])


def test_results_hold_the_imbalance_diagnostics_and_lambda_t(finished):
    from lucir.record import DIAGNOSTIC_METRICS, EXTRA_METRICS, METRICS

    out, _ = finished
    res = json.loads((out / "results.json").read_text())
    with open(out / "results.csv", newline="") as fh:
        header = next(csv.reader(fh))
    for p in res["phases"]:
        assert set(METRICS) | set(EXTRA_METRICS) | set(DIAGNOSTIC_METRICS) <= set(p)
        assert "lambda" not in p
    assert set(DIAGNOSTIC_METRICS) <= set(header) and "lambda_t" in header
    assert res["phases"][0]["bwt_cnn"] is None and res["phases"][0]["weight_norm_old"] is None  # NaN -> null
    assert res["phases"][-1]["bwt_cnn"] is not None


def test_resume_of_a_state_whose_rows_lack_the_newer_metrics_writes_every_column(finished, tmp_path):
    """A state from an older version (rows without the diagnostics): the CSV gets every column, blank where
    a row has no value, instead of csv's 'dict contains fields not in fieldnames'."""
    from lucir.checkpoint import save_state
    from lucir.config import Config
    from lucir.record import DIAGNOSTIC_METRICS

    out, _ = finished
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_bytes((out / "config.json").read_bytes())
    cfg = Config.from_flat(json.loads((out / "config.json").read_text()))
    gen = lucir.run(cfg)
    next(gen)
    _, phase1 = next(gen)
    gen.close()
    phase1["results"] = [{k: v for k, v in r.items() if k not in DIAGNOSTIC_METRICS} for r in phase1["results"]]
    save_state(phase1, run / "state.pt")
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    with open(run / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["phase"]) for r in rows] == [0, 1, 2, 3]
    assert rows[1]["bwt_cnn"] == "" and rows[3]["bwt_cnn"] != ""


def test_sigkilled_train_resumes_inside_the_phase_to_the_bitwise_same_result(tmp_path, capsys):
    """``lucir train`` is SIGKILLed in the middle of phase 1 (after an epoch checkpoint); ``--resume`` goes
    on from that epoch, not from the phase start, and gives the accuracy matrices of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["train", "--dataset", "digits", "--epochs", "40", "--device", "cpu", "--threads", "1", "--quiet",
            "--set", "checkpoint_every=1"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lucir.cli", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    where = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                st = load_state(out / "state.pt")
            except Exception:  # noqa: BLE001 - not written yet
                st = None
            if st is not None and st.get("partial") and st["partial"]["phase"] == 1 and st["partial"]["epoch"] >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed inside phase 1"
    st = load_state(out / "state.pt")
    assert st["phase"] == 0 and st["partial"]["phase"] == 1 and 3 <= st["partial"]["epoch"] < 40
    where = st["partial"]["epoch"]
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert f"in phase 1 after epoch {where}" in capsys.readouterr().out
    full = tmp_path / "full"
    assert main(args + ["--out", str(full)]) == 0
    a = json.loads((out / "results.json").read_text())
    b = json.loads((full / "results.json").read_text())
    assert a["acc_matrix_cnn"] == b["acc_matrix_cnn"] and a["acc_matrix_nme"] == b["acc_matrix_nme"]
    assert [p["phase"] for p in a["phases"]] == [0, 1, 2, 3]


def test_resume_of_a_finished_run_exits_2(finished, capsys):
    out, _ = finished
    assert main(ARGS + ["--out", str(out), "--resume"]) == 2
    assert "last phase" in capsys.readouterr().err


@pytest.fixture
def no_training(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("training started although the input was bad")

    monkeypatch.setattr(lucir, "run", forbidden)


@pytest.mark.parametrize("extra, needle", [
    (["--phases", "4"], "phases=4"),
    (["--base", "10"], "base_classes=10"),
    (["--set", "K=3"], "K=3"),
    (["--exemplars", "-1"], "exemplars_per_class=-1"),
    (["--memory-total", "-100"], "memory_total=-100"),
    (["--preset", "lucir_plus"], "preset='lucir_plus'"),
    (["--set", "lambda_bse=3"], "lambda_bse"),
    (["--set", "margin"], "KEY=VALUE"),
    (["--set", "margin=abc"], "margin='abc'"),
    (["--epochs", "0"], "epochs=0"),
    (["--set", "class_mean_flip=channels"], "class_mean_flip='channels'"),  # digits: 1 channel
    (["--device", "cuda:x"], "device='cuda:x'"),
    (["--set", "verify_images=some"], "verify_images='some'"),
])
def test_bad_input_exits_2_with_the_message_before_any_training(extra, needle, tmp_path, capsys, no_training):
    out = tmp_path / "out"
    assert main(ARGS + ["--out", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert needle in err and "allowed" in err, err
    assert _one_line(err)
    assert not out.exists(), "nothing may be written for a bad configuration"


def _one_line(err: str) -> bool:
    """``lucir <cmd>: error: <msg>`` on one line, no traceback."""
    return err.startswith("lucir train: error: ") and err.strip().count("\n") == 0 and "Traceback" not in err


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_a_cuda_device_this_machine_lacks_fails_in_one_line_before_anything_is_written(device, tmp_path, capsys,
                                                                                       no_training):
    import torch

    if torch.cuda.is_available() and device != "cuda:7":
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    assert main(ARGS[:-3] + ["--device", device, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"device={device!r}" in err and "allowed" in err and _one_line(err), err
    assert not out.exists()


def test_download_false_is_honoured_by_the_early_dataset_check(tmp_path, capsys, no_training, monkeypatch):
    import torchvision

    def no_download(*a, **k):
        raise AssertionError("download attempted although download=false")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", no_download)
    root = tmp_path / "nothing"
    rc = main(["train", "--dataset", "cifar100", "--data-root", str(root), "--epochs", "1", "--set", "download=false",
               "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "download disabled" in err and str(root) in err and _one_line(err), err
    assert not root.exists() and not (tmp_path / "o").exists()  # no empty folder left behind


def test_deterministic_flag_sets_the_runtime_switch():
    from lucir.cli import build_parser, config_overrides
    from lucir.config import Config

    parse = build_parser().parse_args
    assert Config.from_flat(config_overrides(parse(["train", "--deterministic"]))).runtime.deterministic is True
    assert Config.from_flat(config_overrides(parse(["train"]))).runtime.deterministic is False


@pytest.mark.parametrize("item", ["epochs=abc", "milestones=abc"])
def test_non_numeric_integer_field_exits_2(item, tmp_path, capsys, no_training):
    assert main(ARGS + ["--out", str(tmp_path / "out"), "--set", item]) == 2
    assert item.split("=")[0] + "=" in capsys.readouterr().err


def test_resume_without_a_checkpoint_exits_2(tmp_path, capsys, no_training):
    assert main(ARGS + ["--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_with_a_corrupt_checkpoint_exits_2(tmp_path, capsys, no_training):
    (tmp_path / "state.pt").write_bytes(b"\x00garbage")
    assert main(ARGS + ["--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and str(tmp_path / "state.pt") in err and _one_line(err), err


def test_a_truncated_state_pt_is_one_line_naming_the_file(finished, tmp_path, capsys, no_training):
    """torch's own text for a damaged zip/pickle runs to several paragraphs: one line naming the path instead."""
    out, _ = finished
    _copy_run(out, tmp_path)
    blob = (tmp_path / "state.pt").read_bytes()
    (tmp_path / "state.pt").write_bytes(blob[: len(blob) // 2])
    assert main(ARGS + ["--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and str(tmp_path / "state.pt") in err and _one_line(err), err


def test_resume_with_another_dataset_names_the_dataset_field(finished, tmp_path, capsys, no_training):
    out, _ = finished
    _copy_run(out, tmp_path)
    assert main(["train", "--dataset", "cifar100", "--out", str(tmp_path), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "dataset='cifar100'" in err and "'digits'" in err and _one_line(err), err


def _copy_run(src, dst):
    for name in ("state.pt", "config.json", "results.json"):
        (dst / name).write_bytes((src / name).read_bytes())


def test_resume_with_another_config_exits_2(finished, tmp_path, capsys):
    out, _ = finished
    _copy_run(out, tmp_path)
    assert main(ARGS + ["--out", str(tmp_path), "--resume", "--set", "margin=0.3"]) == 2
    assert "margin" in capsys.readouterr().err


def test_refused_resume_leaves_the_output_folder_untouched(finished, tmp_path, capsys):
    out, _ = finished
    _copy_run(out, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(ARGS + ["--out", str(tmp_path), "--resume", "--set", "margin=0.3"]) == 2
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before


def test_unknown_dataset_is_an_argparse_error(tmp_path, capsys, no_training):
    with pytest.raises(SystemExit) as info:
        main(["train", "--dataset", "mnist", "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert "digits" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_missing_cifar100_exits_2_saying_where_to_put_it(tmp_path, capsys, no_training):
    rc = main(["train", "--dataset", "cifar100", "--data-root", str(tmp_path / "nothing"), "--epochs", "1",
               "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "cifar-100-binary" in err and "train.bin" in err and str(tmp_path / "nothing") in err


def test_channels_last_is_on_by_default_and_can_be_turned_off():
    from lucir.cli import build_parser, config_overrides
    from lucir.config import Config

    parse = build_parser().parse_args
    assert Config.from_flat(config_overrides(parse(["train"]))).runtime.channels_last is True
    assert Config.from_flat(config_overrides(parse(["train", "--no-channels-last"]))).runtime.channels_last is False
