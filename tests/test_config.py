"""lucir.config: validation (DESIGN §7), flat round trip, presets (DESIGN §3), lambda per phase, epochs scaling."""

from __future__ import annotations

import math

import pytest

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.config import LADDER, PRESETS, Config, ConfigError, scale_milestones


# ----------------------------------------------------------------------------- bad input (DESIGN §7)
@pytest.mark.parametrize("flat, field, allowed", [
    # digits: 10 classes, 4 base -> 6 non-base classes; 4 phases do not divide them
    (dict(dataset="digits", base_classes=4, phases=4), "phases", ["[1, 2, 3, 6]", "uneven"]),
    # CIFAR-100 B50 x 7 phases: 50 % 7 != 0
    (dict(dataset="cifar100", base_classes=50, phases=7), "phases", ["[1, 2, 5, 10, 25, 50]"]),
    # more base classes than the dataset has
    (dict(dataset="digits", base_classes=12, phases=1), "base_classes", ["1..9", "10 classes"]),
    (dict(dataset="cifar100", base_classes=100, phases=1), "base_classes", ["1..99"]),
    # K larger than the classes per phase (digits B4 x 3 -> 2 classes per phase)
    (dict(dataset="digits", base_classes=4, phases=3, K=3), "K", ["1..2"]),
    (dict(dataset="cifar100", base_classes=50, phases=25, K=3), "K", ["1..2"]),
    # negative budgets
    (dict(dataset="digits", exemplars_per_class=-1), "exemplars_per_class", [">= 0"]),
    (dict(dataset="digits", memory_total=-2000), "memory_total", [">= 0"]),
    # unknown dataset / preset
    (dict(dataset="mnist"), "dataset", ["cifar100", "digits", "imagefolder"]),
    (dict(dataset="digits", preset="lucir_plus"), "preset", list(LADDER)),
    # the reference's channel reversal on 1-channel images would silently do nothing
    (dict(dataset="digits", class_mean_flip="channels"), "class_mean_flip", ["'mirror' or 'none'", "channels=1"]),
    (dict(dataset="imagefolder", num_classes=10, base_classes=4, phases=3, channels=1, class_mean_flip="channels"),
     "class_mean_flip",
     ["'mirror' or 'none'"]),
    # devices and runtime switches
    (dict(dataset="digits", device="cuda:x"), "device", ["'cuda:N'"]),
    (dict(dataset="digits", device="gpu"), "device", ["'auto', 'cpu', 'cuda'"]),
    (dict(dataset="digits", verify_images="some"), "verify_images", ["header", "full", "off"]),
    (dict(dataset="digits", deterministic="maybe"), "deterministic", ["true or false"]),
])
def test_bad_input_is_a_config_error_naming_field_and_allowed_values(flat, field, allowed):
    with pytest.raises(ConfigError) as info:
        Config.from_flat(flat)
    msg = str(info.value)
    assert msg.startswith(f"{field}="), msg
    for a in allowed:
        assert a in msg, (a, msg)


def test_unknown_field_is_a_config_error_listing_the_known_fields():
    with pytest.raises(ConfigError) as info:
        Config.from_flat(dataset="digits", lambda_bse=5.0)
    msg = str(info.value)
    assert "lambda_bse" in msg and "lambda_base" in msg and "margin" in msg


def test_replace_rejects_bad_values_too():
    cfg = Config.from_flat(dataset="digits")
    with pytest.raises(ConfigError, match=r"^phases="):
        cfg.replace(phases=4)
    with pytest.raises(ConfigError, match="unknown config field"):
        cfg.replace(nonsense=1)


def test_bad_string_value_from_the_command_line_names_the_field():
    with pytest.raises(ConfigError, match=r"^margin='abc'"):
        Config.from_flat(dataset="digits", margin="abc")
    with pytest.raises(ConfigError, match=r"^cosine='maybe' .*(bool|true or false)"):
        Config.from_flat(dataset="digits", preset="custom", cosine="maybe")


@pytest.mark.parametrize("key, value", [("epochs", "abc"), ("cbf_epochs", "x"), ("milestones", "abc"),
                                        ("milestones", [3, "a"]), ("num_classes", "ten")])
def test_non_numeric_strings_for_integer_fields_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=rf"^{key}="):
        Config.from_flat({"dataset": "digits", key: value})


def test_switch_that_needs_the_cosine_head_without_it_is_an_error():
    with pytest.raises(ConfigError, match=r"^(imprint|less_forget|margin_ranking)=True .*cosine=true"):
        Config.from_flat(dataset="digits", preset="lucir", cosine=False)
    with pytest.raises(ConfigError, match=r"^mimic_scores=True .*cosine=true"):
        Config.from_flat(dataset="digits", preset="custom", cosine=False, imprint=False, less_forget=False,
                         margin_ranking=False, mimic_scores=True)


def test_memory_total_smaller_than_the_classes_is_an_error():
    with pytest.raises(ConfigError, match=r"^memory_total=5 .*>= 10"):
        Config.from_flat(dataset="digits", memory_total=5)


def test_valid_protocols_are_accepted():
    for base, phases in ((50, 2), (50, 5), (50, 10), (50, 25)):
        cfg = Config.from_flat(dataset="cifar100", base_classes=base, phases=phases)
        assert cfg.protocol.classes_per_phase * phases == 100 - base


# ----------------------------------------------------------------------------- flat form
@pytest.mark.parametrize("flat", [
    dict(dataset="digits"),
    dict(dataset="digits", preset="cn", epochs=7, seed=3, memory_total=40),
    dict(dataset="digits", preset="custom", cosine=True, imprint=False, less_forget=True, margin_ranking=False),
    dict(dataset="cifar100", phases=10, epochs=12, bf16=True, milestones=[4, 9]),
])
def test_flat_round_trip(flat):
    cfg = Config.from_flat(flat)
    again = Config.from_flat(cfg.to_flat())
    assert again == cfg
    assert again.to_flat() == cfg.to_flat()


def test_replace_that_changes_a_switch_makes_the_preset_custom():
    cfg = Config.from_flat(dataset="digits", preset="lucir").replace(margin_ranking=False)
    assert cfg.method.preset == "custom"


def test_flat_keys_are_unique_and_json_friendly():
    import json

    flat = Config.from_flat(dataset="cifar100").to_flat()
    assert json.loads(json.dumps(flat)) == flat
    assert flat["milestones"] == [80, 120]


def test_strings_from_the_command_line_are_coerced():
    cfg = Config.from_flat(dataset="digits", margin="0.3", K="1", bf16="true", epochs="4")
    assert cfg.method.margin == 0.3 and cfg.method.K == 1 and cfg.runtime.bf16 is True
    assert cfg.schedule.epochs == 4


def test_changing_a_switch_of_a_preset_makes_it_custom():
    cfg = Config.from_flat(dataset="digits", preset="lucir", margin_ranking=False)
    assert cfg.method.preset == "custom"
    assert not cfg.method.margin_ranking and cfg.method.less_forget


# ----------------------------------------------------------------------------- dataset defaults
def test_cifar100_defaults_are_the_reference_schedule():
    cfg = Config.from_flat(dataset="cifar100")
    p, m, s = cfg.protocol, cfg.method, cfg.schedule
    assert (p.num_classes, p.base_classes, p.phases, p.exemplars_per_class, p.class_order_seed) == (100, 50, 5, 20, 1993)
    assert (m.eta_init, m.lambda_base, m.margin, m.K, m.mr_weight) == (1.0, 5.0, 0.5, 2, 1.0)
    assert (s.epochs, s.lr, s.milestones, s.gamma, s.momentum, s.weight_decay, s.batch_size) == \
        (160, 0.1, (80, 120), 0.1, 0.9, 5e-4, 128)
    assert cfg.resolved_backbone() == "resnet32"


# ----------------------------------------------------------------------------- --epochs scaling
def test_scale_milestones_160_to_10_epochs():
    assert scale_milestones((80, 120), 160, 10) == (5, 8)


@pytest.mark.parametrize("new_epochs", [2, 5, 8, 10, 12, 15, 40, 100, 160, 320])
def test_scaled_milestones_are_proportional(new_epochs):
    got = scale_milestones((80, 120), 160, new_epochs)
    assert list(got) == sorted(set(got))
    assert all(1 <= g <= new_epochs - 1 for g in got)
    if new_epochs >= 4:  # room for two distinct milestones: each is the proportional one, rounded
        assert len(got) == 2
        for g, m in zip(got, (80, 120)):
            assert abs(g - m * new_epochs / 160) <= 0.5 + 1e-9


def test_epochs_flag_scales_the_dataset_milestones():
    cfg = Config.from_flat(dataset="cifar100", epochs=10)
    assert cfg.schedule.epochs == 10 and cfg.schedule.milestones == (5, 8)
    # explicit milestones win over scaling
    cfg = Config.from_flat(dataset="cifar100", epochs=10, milestones=[3, 6])
    assert cfg.schedule.milestones == (3, 6)


def test_milestones_outside_the_schedule_are_an_error():
    with pytest.raises(ConfigError, match=r"^milestones="):
        Config.from_flat(dataset="cifar100", epochs=10, milestones=[5, 12])


# ----------------------------------------------------------------------------- presets (DESIGN §3 ladder)
def test_presets_set_the_switches_of_the_ladder():
    f, b, cn, lf, lu, cbf, j = (PRESETS[k] for k in LADDER)
    # finetune: plain FC, no distillation of any kind, exemplar replay
    assert not f["cosine"] and not f["kd"] and not f["less_forget"] and not f["mimic_scores"] and not f["joint"]
    # baseline: plain FC + knowledge distillation
    assert not b["cosine"] and b["kd"] and not b["less_forget"] and not b["margin_ranking"]
    # cn: cosine + imprint + mimic scores, nothing frozen
    assert cn["cosine"] and cn["imprint"] and cn["mimic_scores"] and not cn["less_forget"] and not cn["kd"]
    assert not cn["margin_ranking"]
    # cn_lf: + less-forget with adaptive lambda
    assert lf["cosine"] and lf["imprint"] and lf["less_forget"] and lf["adaptive_lambda"] and not lf["margin_ranking"]
    # lucir = cn_lf + margin ranking; lucir_cbf = lucir + CBF
    assert {k for k in lu if lu[k] != lf[k]} == {"margin_ranking"}
    assert {k for k in cbf if cbf[k] != lu[k]} == {"cbf"}
    assert not lu["kd"] and not lu["cbf"] and not lu["joint"]
    # joint: all seen data, the upper bound; the only preset that trains on all data
    assert j["joint"] and sum(p["joint"] for p in PRESETS.values()) == 1
    assert set(PRESETS) == set(LADDER)


@pytest.mark.parametrize("preset", LADDER)
def test_preset_is_applied_by_from_flat(preset):
    cfg = Config.from_flat(dataset="digits", preset=preset)
    assert cfg.method.preset == preset
    for k, v in PRESETS[preset].items():
        assert getattr(cfg.method, k) is v


# ----------------------------------------------------------------------------- lambda per phase
def test_lambda_cifar_b50_5_phases_runs_11_18_to_15_00():
    cfg = Config.from_flat(dataset="cifar100", base_classes=50, phases=5)
    lams = [cfg.lambda_at(t) for t in range(1, 6)]
    assert [round(v, 2) for v in (lams[0], lams[-1])] == [11.18, 15.00]
    # lambda_base * sqrt(N_old / N_new), N_new = 10, N_old = 50, 60, ..., 90
    for t, lam in enumerate(lams, start=1):
        assert lam == pytest.approx(5.0 * math.sqrt((50 + 10 * (t - 1)) / 10))
    assert lams == sorted(lams)


def test_lambda_cifar_b50_10_phases_runs_15_81_to_21_79():
    cfg = Config.from_flat(dataset="cifar100", base_classes=50, phases=10)
    assert round(cfg.lambda_at(1), 2) == 15.81
    assert round(cfg.lambda_at(10), 2) == 21.79


def test_lambda_imagenet_subset_uses_lambda_base_10():
    # LUCIR_REFERENCE §3: ImageNet 5 phases 22.36 -> 30.00 (the code's lambda_base 10)
    # (an imagefolder config needs a folder on disk; the formula depends only on the numbers)
    cfg = Config.from_flat(dataset="cifar100", base_classes=50, phases=5, lambda_base=10.0)
    assert round(cfg.lambda_at(1), 2) == 22.36 and round(cfg.lambda_at(5), 2) == 30.00


def test_lambda_without_adaptive_weight_is_lambda_base():
    cfg = Config.from_flat(dataset="cifar100", preset="custom", adaptive_lambda=False)
    assert cfg.lambda_at(1) == cfg.lambda_at(5) == 5.0


# ----------------------------------------------------------------------------- budgets
def test_fixed_total_memory_is_shared_among_seen_classes_with_the_references_ceiling():
    """The reference's --fix_budget: int(np.ceil(2000 / seen)) per class (LUCIR_REFERENCE §2), not floor."""
    cfg = Config.from_flat(dataset="cifar100", memory_total=2000)
    assert [cfg.quota(t) for t in range(6)] == [math.ceil(2000 / s) for s in (50, 60, 70, 80, 90, 100)]
    assert [cfg.quota(t) for t in range(6)] == [40, 34, 29, 25, 23, 20]
    assert Config.from_flat(dataset="cifar100").quota(3) == 20
    assert [Config.from_flat(dataset="digits", memory_total=40).quota(t) for t in range(4)] == [10, 7, 5, 4]
    import lucir.config  # documented where the config is described

    assert "ceil(memory_total / seen)" in lucir.config.__doc__


def test_base_key_includes_precision_memory_format_and_compile():
    """Issue 17: a bf16 (or channels_last / compiled) base phase must not seed fp32 trials."""
    a = Config.from_flat(dataset="digits", channels_last=False)
    for change in (dict(bf16=True), dict(channels_last=True), dict(compile=True)):
        assert a.replace(**change).base_key() != a.base_key(), change
        assert a.replace(**change).identity() == a.identity()  # runtime: not what the result is, only its numerics
    for same in (dict(threads=3), dict(deterministic=True), dict(verify_images="full"), dict(device="cpu")):
        assert a.replace(**same).base_key() == a.base_key(), same


def test_deterministic_and_verify_images_are_runtime_fields_with_defaults():
    cfg = Config.from_flat(dataset="digits")
    assert cfg.runtime.deterministic is False and cfg.runtime.verify_images == "header"
    assert Config.from_flat(dataset="digits", deterministic="true").runtime.deterministic is True


def test_base_key_ignores_incremental_hyperparameters_but_not_the_seed():
    a = Config.from_flat(dataset="digits")
    assert a.base_key() == a.replace(margin=0.2, K=1, lambda_base=3.0, phases=6).base_key()
    assert a.base_key() != a.replace(seed=1).base_key()
    assert a.base_key() != a.replace(base_classes=2, phases=4).base_key()


def test_config_is_a_leaf_without_file_system_io(monkeypatch, tmp_path):
    """Issue 17: config imports nothing of lucir and reads no files; the ImageFolder class count comes from the
    caller (``num_classes_of``) or the counter ``lucir.data`` registers."""
    import ast

    import lucir.config as config

    tree = ast.parse(open(config.__file__).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("lucir")}, imported
    assert imported <= {"__future__", "dataclasses", "hashlib", "json", "math", "re", "typing"}, imported
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "open" not in calls
    seen = []
    cfg = Config.from_flat(dataset="imagefolder", data_root=str(tmp_path), base_classes=2, phases=2,
                           num_classes_of=lambda root: seen.append(root) or 6)
    assert cfg.protocol.num_classes == 6 and seen == [str(tmp_path)]
    monkeypatch.setattr(config, "CLASS_COUNTERS", {})
    with pytest.raises(ConfigError, match=r"^num_classes=None .*imagefolder"):
        Config.from_flat(dataset="imagefolder", data_root=str(tmp_path))
    assert Config.from_flat(dataset="imagefolder", num_classes=7, base_classes=1, phases=3).protocol.num_classes == 7
