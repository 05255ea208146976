"""End to end on digits: ``lucir.run`` determinism, resume equivalence, frozen old rows, imprinting in a real
run, checkpoints (DESIGN §7), divergence, the per-phase metrics (DESIGN §4)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from lucir_fixtures import digits, run_all, same_tensors, tiny_config
from lucir.checkpoint import CheckpointError, load_state, save_state
from lucir.data import class_order
from lucir.heads import CosineHead
from lucir.learner import TrainingDivergedError
from lucir.run import build_model, check_state

pytestmark = pytest.mark.slow

TIMING = {"train_seconds", "phase_seconds"}


def _metrics(res):
    return {k: v for k, v in res.metrics().items() if k not in TIMING}


def _same_metrics(a, b) -> bool:
    ma, mb = _metrics(a), _metrics(b)
    return ma.keys() == mb.keys() and all(
        (isinstance(ma[k], float) and math.isnan(ma[k]) and math.isnan(mb[k])) or ma[k] == mb[k] for k in ma)


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()  # lucir preset, 4 base classes + 3 phases of 2, 2 epochs per phase


@pytest.fixture(scope="module")
def full(cfg):
    """One uninterrupted run: [(PhaseResult, state)] for phases 0..3."""
    return run_all(cfg)


# ----------------------------------------------------------------------------- determinism and resume
def test_same_config_twice_gives_identical_results_and_weights(cfg, full):
    again = run_all(cfg)
    assert [r.phase for r, _ in full] == [0, 1, 2, 3]
    assert full[-1][0].acc_matrix_cnn == again[-1][0].acc_matrix_cnn
    assert full[-1][0].acc_matrix_nme == again[-1][0].acc_matrix_nme
    for (ra, sa), (rb, sb) in zip(full, again):
        assert _same_metrics(ra, rb)
        assert same_tensors(sa["model"], sb["model"])
        assert sa["memory"] == sb["memory"]


def test_resume_after_phase_1_through_a_file_equals_the_uninterrupted_run(cfg, full, tmp_path):
    first = run_all(cfg, stop_after=1)  # the run is interrupted after phase 1
    assert [r.phase for r, _ in first] == [0, 1]
    save_state(first[-1][1], tmp_path / "state.pt")
    resumed = run_all(cfg, load_state(tmp_path / "state.pt"))
    assert [r.phase for r, _ in resumed] == [2, 3]
    for (ra, sa), (rb, sb) in zip(full[2:], resumed):
        assert _same_metrics(ra, rb)
        assert ra.acc_matrix_cnn == rb.acc_matrix_cnn and ra.acc_matrix_nme == rb.acc_matrix_nme
        assert same_tensors(sa["model"], sb["model"])
        assert sa["memory"] == sb["memory"]
    # the resumed run carries the earlier phases' results, so the averages include them
    assert resumed[-1][1]["results"][0]["acc_cnn"] == full[0][0].acc_cnn


@pytest.mark.parametrize("after", [0, 2])
def test_resume_after_any_phase_equals_the_uninterrupted_run(cfg, full, tmp_path, after):
    save_state(full[after][1], tmp_path / "s.pt")
    resumed = run_all(cfg, load_state(tmp_path / "s.pt"))
    assert [r.phase for r, _ in resumed] == list(range(after + 1, 4))
    assert _same_metrics(resumed[-1][0], full[-1][0])
    assert same_tensors(resumed[-1][1]["model"], full[-1][1]["model"])


@pytest.mark.parametrize("preset", ["baseline", "lucir_cbf"])
def test_resume_equivalence_for_the_linear_head_and_cbf(preset, tmp_path):
    cfg = tiny_config(preset=preset, epochs=1, cbf_epochs=1)
    whole = run_all(cfg)
    save_state(whole[1][1], tmp_path / "s.pt")
    resumed = run_all(cfg, load_state(tmp_path / "s.pt"))
    assert resumed[-1][0].acc_matrix_cnn == whole[-1][0].acc_matrix_cnn
    assert resumed[-1][0].acc_matrix_nme == whole[-1][0].acc_matrix_nme
    assert same_tensors(resumed[-1][1]["model"], whole[-1][1]["model"])


# ----------------------------------------------------------------------------- resume inside a phase
class _Killed(Exception):
    pass


def _checkpoint_at(cfg, phase: int, epoch: int, path):
    """Run until the epoch checkpoint (phase, epoch), save it to ``path`` as the CLI does, then die."""
    seen = []

    def on_checkpoint(st):
        seen.append((st["partial"]["phase"], st["partial"]["epoch"]))
        if seen[-1] == (phase, epoch):
            save_state(st, path)
            raise _Killed

    with pytest.raises(_Killed):
        for _ in __import__("lucir").run(cfg, None, data=digits(), on_checkpoint=on_checkpoint):
            pass
    return seen


@pytest.mark.parametrize("preset,phase,epoch", [("lucir", 0, 1), ("lucir", 1, 2), ("lucir", 1, 3),
                                                ("baseline", 2, 1), ("lucir_cbf", 3, 3)])
def test_resume_inside_a_phase_equals_the_uninterrupted_run_bitwise(preset, phase, epoch, tmp_path):
    """Killed after epoch ``epoch`` of ``phase`` (3 = after the last epoch, before herding/CBF/evaluation),
    resumed from the saved epoch checkpoint: accuracy matrices and weights equal an uninterrupted run's."""
    cfg = tiny_config(preset=preset, epochs=3, checkpoint_every=1, cbf_epochs=2)
    whole = run_all(cfg)
    seen = _checkpoint_at(cfg, phase, epoch, tmp_path / "state.pt")
    assert seen[-1] == (phase, epoch) and len(seen) == 3 * phase + epoch  # one checkpoint per epoch
    st = load_state(tmp_path / "state.pt")
    assert st["phase"] == phase - 1 and st["partial"]["epoch"] == epoch
    resumed = run_all(cfg, st)
    assert [r.phase for r, _ in resumed] == list(range(phase, 4))
    assert resumed[-1][0].acc_matrix_cnn == whole[-1][0].acc_matrix_cnn
    assert resumed[-1][0].acc_matrix_nme == whole[-1][0].acc_matrix_nme
    for (ra, sa), (rb, sb) in zip(whole[phase:], resumed):
        assert _same_metrics(ra, rb)
        assert same_tensors(sa["model"], sb["model"]) and sa["memory"] == sb["memory"]
        assert "partial" not in sb  # phase-end states hold no training in progress


def test_checkpoint_every_sets_the_epochs_of_the_mid_phase_checkpoints():
    import lucir

    seen = []
    cfg = tiny_config(epochs=5, checkpoint_every=2, phases=1, base_classes=4, K=1)
    for _ in lucir.run(cfg, None, data=digits(), on_checkpoint=lambda st: seen.append(
            (st["partial"]["phase"], st["partial"]["epoch"]))):
        pass
    assert seen == [(0, 2), (0, 4), (0, 5), (1, 2), (1, 4), (1, 5)]  # every 2 epochs and after the last
    seen.clear()
    for _ in lucir.run(cfg.replace(checkpoint_every=0), None, data=digits(),
                       on_checkpoint=lambda st: seen.append(st)):
        pass
    assert seen == []  # 0: phase ends only


def test_mid_phase_checkpoint_of_another_config_is_refused(tmp_path):
    """A phase-1 checkpoint holds this config's own incremental training: a config that differs only in
    margin (same base key) must not resume it; a base-phase checkpoint still seeds any config of its key."""
    cfg = tiny_config(epochs=2, checkpoint_every=1)
    _checkpoint_at(cfg, 1, 1, tmp_path / "p1.pt")
    other = cfg.replace(margin=0.3)
    assert other.base_key() == cfg.base_key()
    with pytest.raises(CheckpointError, match="margin"):
        check_state(other, load_state(tmp_path / "p1.pt"))
    _checkpoint_at(cfg, 0, 1, tmp_path / "p0.pt")
    check_state(other, load_state(tmp_path / "p0.pt"))


def test_resume_of_a_run_seeded_by_another_configs_base_phase_equals_the_uninterrupted_run(tmp_path):
    """Issue 17: a run started from another config's phase-0 state (the runner's base-phase cache) writes
    mid-phase checkpoints under its own identity, and resuming from one equals the uninterrupted run."""
    import lucir

    owner = tiny_config(epochs=3, checkpoint_every=1)
    base = run_all(owner, stop_after=0)[0][1]
    cfg = owner.replace(margin=0.3)
    assert cfg.base_key() == owner.base_key() and cfg.identity() != owner.identity()
    whole = run_all(cfg, base)
    saved = []

    def on_checkpoint(st):
        if st["partial"]["phase"] == 2 and st["partial"]["epoch"] == 2:
            save_state(st, tmp_path / "state.pt")
            saved.append(st)
            raise _Killed

    with pytest.raises(_Killed):
        for _ in lucir.run(cfg, base, data=digits(), on_checkpoint=on_checkpoint):
            pass
    st = load_state(tmp_path / "state.pt")
    assert st["config"] == cfg.identity() and st["base_key"] == cfg.base_key()
    check_state(cfg, st)  # before the fix: "belongs to another configuration (margin: ...)"
    resumed = run_all(cfg, st)
    assert [r.phase for r, _ in resumed] == [2, 3]
    assert resumed[-1][0].acc_matrix_cnn == whole[-1][0].acc_matrix_cnn
    assert resumed[-1][0].acc_matrix_nme == whole[-1][0].acc_matrix_nme
    assert [r.phase for r, _ in whole] == [1, 2, 3]
    for (ra, sa), (rb, sb) in zip(whole[1:], resumed):
        ma, mb = _metrics(ra), _metrics(rb)
        assert _same_metrics(ra, rb), {k: (ma[k], mb.get(k)) for k in ma if ma[k] != mb.get(k)}
        assert same_tensors(sa["model"], sb["model"]) and sb["config"] == cfg.identity()


# ----------------------------------------------------------------------------- frozen old rows (LF on / off)
def test_old_class_weights_do_not_change_during_a_phase_with_less_forget(full):
    for t in range(1, 4):
        prev = full[t - 1][1]["model"]
        before = torch.cat([prev["head.old"], prev["head.new"]])  # every row of phase t-1 becomes old
        after = full[t][1]["model"]["head.old"]
        assert torch.equal(after, before), f"old-class rows changed in phase {t}"
        assert full[t][1]["model"]["head.new"].shape[0] == 2
    # ... while the rest of the model did train
    assert not torch.equal(full[1][1]["model"]["head.new"], full[0][1]["model"]["head.new"][:2])
    conv = [k for k in full[0][1]["model"] if k.endswith("conv1.weight")][0]
    assert not torch.equal(full[1][1]["model"][conv], full[0][1]["model"][conv])


def test_old_class_weights_do_change_without_less_forget(full):
    cn = tiny_config(preset="cn")  # cosine + imprint + mimic scores, nothing frozen
    state0 = full[0][1]
    check_state(cn, state0)  # the base phase does not depend on the incremental switches: it is shared
    (res, st), = run_all(cn, state0, stop_after=1)
    old0 = torch.cat([state0["model"]["head.old"], state0["model"]["head.new"]])
    assert st["model"]["head.old"].shape == old0.shape
    assert not torch.equal(st["model"]["head.old"], old0)


# ----------------------------------------------------------------------------- imprinting in a real run
def test_new_rows_are_imprinted_from_class_means_with_the_mean_old_norm(cfg, full, monkeypatch):
    captured = []
    original = CosineHead.expand

    def spy(self, n_new, rows=None, gen=None):
        original(self, n_new, rows, gen)
        captured.append((self.old.detach().clone(), self.new.detach().clone()))

    monkeypatch.setattr(CosineHead, "expand", spy)
    state0 = full[0][1]
    run_all(cfg, state0, stop_after=1)
    (old, new), = captured
    assert new.shape == (2, 64)
    # norm: the mean norm of the old rows
    assert torch.allclose(new.norm(dim=1), old.norm(dim=1).mean().expand(2), rtol=1e-5)
    # direction: the normalised mean of the normalised phase-0 features of all the class's training images
    d = digits()
    model = build_model(cfg, 1, state0["head"])
    model.load_state_dict(state0["model"])
    model.eval()
    order = class_order(10, cfg.protocol.class_order_seed)
    with torch.no_grad():
        for row, pos in zip(new, (4, 5)):  # phase 1 brings class positions 4 and 5
            x = d.train_x[d.train_y == int(order[pos])].float() / 255.0
            x = (x - d.mean[0]) / d.std[0]  # the eval transform: no crop, no flip
            f = F.normalize(model.backbone(x), dim=1)
            expect = F.normalize(f.mean(0), dim=0) * old.norm(dim=1).mean()
            assert torch.allclose(row, expect, atol=1e-5)


# ----------------------------------------------------------------------------- per-phase results
def test_phase_results_follow_the_metric_definitions(cfg, full):
    d = digits()
    order = class_order(10, cfg.protocol.class_order_seed)
    test_counts = torch.bincount(d.test_y, minlength=10)
    group_sizes = [int(sum(test_counts[int(order[c])] for c in cfg.protocol.phase_classes(t))) for t in range(4)]
    accs_cnn, accs_nme = [], []
    for t, (res, st) in enumerate(full):
        assert res.phase == t and res.classes_seen == 4 + 2 * t
        row = res.acc_matrix_cnn[t]
        assert len(row) == t + 1 and len(res.acc_matrix_cnn) == t + 1
        # the accuracy on all seen classes is the size-weighted mean of the group accuracies
        total = sum(a * n for a, n in zip(row, group_sizes)) / sum(group_sizes[: t + 1])
        assert res.acc_cnn == pytest.approx(total, abs=1e-3)
        nrow = res.acc_matrix_nme[t]
        assert res.acc_nme == pytest.approx(sum(a * n for a, n in zip(nrow, group_sizes)) /
                                            sum(group_sizes[: t + 1]), abs=1e-3)
        accs_cnn.append(res.acc_cnn)
        accs_nme.append(res.acc_nme)
        assert res.avg_inc_acc_cnn == pytest.approx(sum(accs_cnn) / len(accs_cnn))
        assert res.avg_inc_acc_nme == pytest.approx(sum(accs_nme) / len(accs_nme))
        assert res.acc_new_cnn == row[-1]
        if t:
            old = sum(a * n for a, n in zip(row[:-1], group_sizes)) / sum(group_sizes[:t])
            assert res.acc_old_cnn == pytest.approx(old, abs=1e-3)
            best = [max(res.acc_matrix_cnn[s][g] for s in range(g, t)) - row[g] for g in range(t)]
            assert res.forgetting_cnn == pytest.approx(sum(best) / t)
            assert res.lambda_t == pytest.approx(5.0 * math.sqrt((4 + 2 * (t - 1)) / 2))
            assert res.metrics()["lambda_t"] == res.lambda_t
        else:
            assert math.isnan(res.acc_old_cnn) and res.forgetting_cnn == 0.0
        # per-class budget: every seen class keeps its quota (digits has > 100 training images per class)
        assert res.exemplars == cfg.protocol.exemplars_per_class * res.classes_seen
        assert all(0.0 <= a <= 100.0 for a in row + nrow)
        assert res.train_seconds > 0 and res.eta > 0
    # the matrix rows of earlier phases are kept as they were
    assert full[-1][0].acc_matrix_cnn[:3] == full[2][0].acc_matrix_cnn


def test_imbalance_diagnostics_are_reported_every_phase_and_in_range(cfg, full):
    from lucir.record import DIAGNOSTIC_METRICS, EXTRA_METRICS, METRICS

    pct = ("acc_old_nme", "acc_new_nme", "top5_cnn", "top5_nme", "old_as_new_cnn", "new_as_old_cnn",
           "old_as_new_nme", "new_as_old_nme")
    old_only = {"acc_old_nme", "old_as_new_cnn", "new_as_old_cnn", "old_as_new_nme", "new_as_old_nme",
                "weight_norm_old", "feature_norm_old", "bwt_cnn", "bwt_nme"}
    for t, (res, st) in enumerate(full):
        m = res.metrics()
        assert set(METRICS) | set(EXTRA_METRICS) | set(DIAGNOSTIC_METRICS) <= set(m)
        assert st["results"][-1].keys() == m.keys()  # the state's rows (the runner's records) hold them too
        for k in DIAGNOSTIC_METRICS:
            if t == 0 and k in old_only:
                assert math.isnan(m[k]), k
                continue
            assert math.isfinite(m[k]), (t, k)
            if k in pct:
                assert 0.0 <= m[k] <= 100.0, (t, k)
            if k.startswith(("weight_norm", "feature_norm")):
                assert m[k] > 0, (t, k)
        assert m["top5_cnn"] >= m["acc_cnn"] and m["top5_nme"] >= m["acc_nme"]
        assert m["acc_new_nme"] == res.acc_matrix_nme[t][-1]
        if t:
            nme = res.acc_matrix_nme
            assert m["bwt_cnn"] == pytest.approx(sum(res.acc_matrix_cnn[t][g] - res.acc_matrix_cnn[g][g]
                                                     for g in range(t)) / t)
            assert m["bwt_nme"] == pytest.approx(sum(nme[t][g] - nme[g][g] for g in range(t)) / t)
            assert m["bwt_cnn"] >= -m["forgetting_cnn"] - 1e-9  # best-ever >= just-learnt accuracy
        else:
            assert m["forgetting_nme"] == 0.0
    # the weight norms are those of the raw head rows saved in the state: old rows (fc1), new rows (fc2)
    for res, st in full[1:]:
        for part, name in (("old", "weight_norm_old"), ("new", "weight_norm_new")):
            w = st["model"][f"head.{part}"]
            assert getattr(res, name) == pytest.approx(float(w.norm(dim=1).mean()))


def test_exemplars_are_distinct_training_images_of_their_class_kept_for_ever(cfg, full):
    from lucir.data import Source

    q = cfg.protocol.exemplars_per_class
    assert q >= 2
    src = Source(digits(), class_order(10, cfg.protocol.class_order_seed), torch.device("cpu"))
    mem = full[-1][1]["memory"]
    assert sorted(mem) == list(range(10))
    for c, ranks in mem.items():
        assert len(ranks) == q and len(set(ranks)) == q
        assert all(int(src.train_y[i]) == c for i in ranks)
    for t in range(1, 4):  # old classes are never re-selected
        prev = full[t - 1][1]["memory"]
        assert all(full[t][1]["memory"][c] == prev[c] for c in prev)


def test_fixed_total_memory_shrinks_each_class_to_its_herding_prefix():
    cfg = tiny_config(memory_total=40, epochs=1)
    out = run_all(cfg)
    assert [r.exemplars for r, _ in out] == [40, 42, 40, 40]  # quotas ceil(40 / seen): 10, 7, 5, 4 per class
    ranks = out[-1][1]["memory"]
    assert all(len(r) == 10 for c, r in ranks.items() if c < 4)  # herded once with quota 10, kept as ranks


def test_deterministic_switch_is_applied_and_gives_the_cpu_run_s_matrix(cfg, full, monkeypatch):
    """Issue 17 part 4: ``deterministic`` sets torch's deterministic algorithms, cuDNN deterministic / no
    autotuning and CUBLAS_WORKSPACE_CONFIG; on the CPU (already deterministic) the accuracy matrices and
    weights equal the run without it.  (Its GPU effect and cost are not measured here: no GPU.)"""
    import importlib

    run_module = importlib.import_module("lucir.run")  # the module (``lucir.run`` is the function)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    seen = {}
    real = run_module.set_deterministic

    def spy(on):
        real(on)
        seen.update(on=on, algorithms=torch.are_deterministic_algorithms_enabled(),
                    warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
                    cudnn=torch.backends.cudnn.deterministic, benchmark=torch.backends.cudnn.benchmark,
                    cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))

    monkeypatch.setattr(run_module, "set_deterministic", spy)
    try:
        det = run_all(cfg.replace(deterministic=True))
        assert seen == dict(on=True, algorithms=True, warn_only=True, cudnn=True, benchmark=False, cublas=":4096:8")
    finally:
        real(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert det[-1][0].acc_matrix_cnn == full[-1][0].acc_matrix_cnn
    assert det[-1][0].acc_matrix_nme == full[-1][0].acc_matrix_nme
    for (ra, sa), (rb, sb) in zip(full, det):
        assert _same_metrics(ra, rb) and same_tensors(sa["model"], sb["model"])
    assert cfg.replace(deterministic=True).base_key() == cfg.base_key()  # seeds and is seeded by the same base


@pytest.mark.parametrize("preset", ["finetune", "baseline", "cn_lf", "lucir_cbf", "joint"])
def test_every_rung_of_the_ladder_runs(preset):
    cfg = tiny_config(preset=preset, epochs=1, cbf_epochs=1, phases=1, base_classes=8, K=1)
    out = run_all(cfg)
    assert [r.phase for r, _ in out] == [0, 1]
    res = out[-1][0]
    assert res.classes_seen == 10 and 0 <= res.acc_cnn <= 100 and 0 <= res.acc_nme <= 100
    fc = preset in ("finetune", "baseline")
    assert math.isnan(res.eta) == fc
    keys = out[-1][1]["model"]
    assert ("head.weight" in keys) == fc and ("head.eta" in keys) != fc
    # the FC rungs use the plain network (ReLU everywhere), the cosine rungs the modified one
    model = build_model(cfg, 1, out[-1][1]["head"])
    assert model.backbone.last_relu == fc


def test_bf16_and_channels_last_options_run():
    out = run_all(tiny_config(epochs=1, bf16=True, channels_last=True), stop_after=1)
    assert [r.phase for r, _ in out] == [0, 1] and all(math.isfinite(r.acc_cnn) for r, _ in out)


# ----------------------------------------------------------------------------- divergence
def test_nan_loss_raises_training_diverged_naming_phase_and_epoch():
    with pytest.raises(TrainingDivergedError, match=r"phase 0, epoch 1\b"):
        run_all(tiny_config(lr=1e30))


def test_divergence_in_an_incremental_phase_names_that_phase(full):
    cfg = tiny_config(lambda_base=1e30)  # same base key: resumes from the shared base phase
    with pytest.raises(TrainingDivergedError, match=r"phase 1, epoch \d+"):
        run_all(cfg, full[0][1])


# ----------------------------------------------------------------------------- checkpoints
def test_corrupt_checkpoint_is_a_checkpoint_error(full, tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_state(bad)
    good = tmp_path / "good.pt"
    save_state(full[1][1], good)
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_state(trunc)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"format": 99, "phase": 1}, other)
    with pytest.raises(CheckpointError, match="format"):
        load_state(other)


def test_state_that_is_not_a_run_state_is_a_checkpoint_error(cfg, tmp_path):
    p = tmp_path / "s.pt"
    save_state({"phase": 1}, p)
    with pytest.raises(CheckpointError, match="missing"):
        run_all(cfg, load_state(p))


def test_checkpoint_of_another_config_is_a_checkpoint_error(cfg, full):
    other = cfg.replace(margin=0.3)
    with pytest.raises(CheckpointError, match="margin"):
        run_all(other, full[1][1])
    with pytest.raises(CheckpointError, match="base key"):
        run_all(cfg.replace(seed=1), full[0][1])  # another seed trains another base phase
    with pytest.raises(CheckpointError, match="last phase"):
        run_all(cfg, full[-1][1])
    # runtime fields are not part of the identity: a checkpoint resumes on another device / with bf16
    check_state(cfg.replace(bf16=True, threads=1), full[1][1])


def test_save_state_is_atomic(full, tmp_path, monkeypatch):
    p = tmp_path / "state.pt"
    save_state(full[0][1], p)
    assert sorted(os.listdir(tmp_path)) == ["state.pt"]
    before = p.read_bytes()

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        save_state(full[1][1], p)
    assert p.read_bytes() == before, "a failed write must leave the previous checkpoint intact"
    assert sorted(os.listdir(tmp_path)) == ["state.pt"], "no temporary file left behind"
    monkeypatch.undo()
    assert load_state(p)["phase"] == 0


# ----------------------------------------------------------------------------- what a phase trains on, and how
def test_incremental_phase_trains_on_new_classes_plus_the_old_exemplars(cfg, full, monkeypatch):
    from lucir import learner
    from lucir.data import Source

    seen = []
    original = learner.train_phase

    def spy(model, ref_model, source, indices, *a, **k):
        seen.append((indices.clone(), ref_model is not None))
        return original(model, ref_model, source, indices, *a, **k)

    monkeypatch.setattr(learner, "train_phase", spy)
    run_all(cfg, full[0][1], stop_after=1)
    run_all(tiny_config(preset="joint"), full[0][1], stop_after=1)
    (lucir_idx, lucir_ref), (joint_idx, joint_ref) = seen
    src = Source(digits(), class_order(10, 1993), torch.device("cpu"))
    new = torch.nonzero((src.train_y == 4) | (src.train_y == 5)).flatten()
    exemplars = [i for c in range(4) for i in full[0][1]["memory"][c]]
    assert sorted(lucir_idx.tolist()) == sorted(new.tolist() + exemplars)
    assert lucir_ref, "the frozen previous model feeds less-forget"
    # joint (the upper bound): every training image of the seen classes, no reference model
    assert sorted(joint_idx.tolist()) == torch.nonzero(src.train_y < 6).flatten().tolist()
    assert not joint_ref


def test_lr_steps_down_after_each_milestone_epoch_and_every_parameter_incl_eta_is_optimised(monkeypatch):
    from lucir import learner

    record = []
    original = learner._sgd

    def spy(groups, momentum, device):
        opt = original(groups, momentum, device)
        (group,) = opt.param_groups  # one run: one member, one param group
        record.append({"params": {id(p) for p in group["params"]}, "lrs": [], "wd": group["weight_decay"],
                       "momentum": momentum})
        opt.register_step_pre_hook(lambda o, args, kwargs: record[-1]["lrs"].append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(learner, "_sgd", spy)
    cfg = tiny_config(epochs=3, milestones=[1, 2], lr=0.05)
    captured = {}
    original_phase = learner.train_phase

    def keep_model(model, *a, **k):
        captured["model"] = model
        return original_phase(model, *a, **k)

    monkeypatch.setattr(learner, "train_phase", keep_model)
    run_all(cfg, stop_after=0)
    (rec,) = record
    steps = len(rec["lrs"]) // 3
    assert steps > 1 and len(rec["lrs"]) == 3 * steps  # same number of batches in every epoch
    assert rec["lrs"] == pytest.approx([0.05] * steps + [0.005] * steps + [0.0005] * steps)
    assert rec["wd"] == cfg.schedule.weight_decay and rec["momentum"] == 0.9
    (model,) = captured["model"].nets  # one run: a Members array of one
    assert rec["params"] == {id(p) for p in model.parameters()}
    assert id(model.head.eta) in rec["params"]  # eta is trained, with weight decay, like the reference


def test_cbf_trains_only_the_classifier_rows_with_backbone_bn_and_eta_frozen(full, monkeypatch):
    from lucir import learner

    cfg = tiny_config(preset="lucir_cbf", cbf_epochs=2)
    check_state(cfg, full[0][1])
    snap = {}
    original = learner.class_balanced_finetune

    def spy(model, *a, **k):
        snap["before"] = {k: v.detach().clone() for k, v in model.nets[0].state_dict().items()}
        out = original(model, *a, **k)
        snap["after"] = {k: v.detach().clone() for k, v in model.nets[0].state_dict().items()}
        return out

    monkeypatch.setattr(learner, "class_balanced_finetune", spy)
    run_all(cfg, full[0][1], stop_after=1)
    before, after = snap["before"], snap["after"]
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone), "CBF must not touch the backbone or BN stats"
    assert torch.equal(before["head.eta"], after["head.eta"])
    assert not torch.equal(before["head.old"], after["head.old"])  # both classifier parts are finetuned
    assert not torch.equal(before["head.new"], after["head.new"])


# ----------------------------------------------------------------------------- validation split (val_fraction)
def test_validation_split_is_stratified_seeded_and_the_same_for_every_training_seed():
    from lucir.data import validation_split

    y = torch.arange(10).repeat_interleave(torch.tensor([5, 9, 20, 33, 40, 41, 50, 100, 2, 7]))
    a = validation_split(y, 0.1, 1993)
    for c in range(10):
        n = int((y == c).sum())
        assert int(a[y == c].sum()) == min(max(1, round(0.1 * n)), n - 1)  # >= 1 held out, >= 1 kept
    assert torch.equal(a, validation_split(y, 0.1, 1993))
    assert not torch.equal(a, validation_split(y, 0.1, 7))
    assert not validation_split(y, 0.0, 1993).any()


def test_held_out_images_are_never_trained_on_imprinted_or_herded(monkeypatch):
    """val_fraction > 0: every index a phase trains, imprints from or keeps as an exemplar lies outside the
    held-out split; the val metrics are reported and their running mean is val_avg_inc_acc."""
    from lucir import learner
    from lucir.data import Source, validation_split

    cfg = tiny_config(val_fraction=0.2, epochs=1, seed=3)
    src = Source(digits(), class_order(10, 1993), torch.device("cpu"))
    held = validation_split(src.train_y, 0.2, cfg.protocol.class_order_seed)
    touched = []
    real_train, real_extract = learner.train_phase, learner.extract

    def train(model, ref, source, indices, *a, **k):
        touched.append(indices.clone())
        return real_train(model, ref, source, indices, *a, **k)

    def extract(model, source, split, indices, *a, **k):
        if split == "train" and indices is not None and len(indices) and not held[indices].all():
            touched.append(indices.clone())  # imprinting, herding, class means (not the validation pass)
        return real_extract(model, source, split, indices, *a, **k)

    monkeypatch.setattr(learner, "train_phase", train)
    monkeypatch.setattr(learner, "extract", extract)
    out = run_all(cfg)
    assert touched and not any(held[t].any() for t in touched)
    memory = out[-1][1]["memory"]
    assert not any(held[i] for ranks in memory.values() for i in ranks)
    vals = [r.val_acc_cnn for r, _ in out]
    assert all(0 <= v <= 100 for v in vals)
    assert out[-1][0].val_avg_inc_acc_cnn == pytest.approx(sum(vals) / len(vals))
    assert "val_avg_inc_acc_nme" in out[-1][0].metrics()
    assert "val_acc_cnn" not in run_all(tiny_config(epochs=1), stop_after=0)[0][0].metrics()  # no split, no keys
    assert cfg.base_key() != cfg.replace(val_fraction=0.0).base_key()  # phase 0 trains on fewer images
