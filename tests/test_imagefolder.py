"""Any image folder (issue 8): image size, channels, augmentation and normalisation from the config; the
in-memory tensor path vs the DataLoader path; mean/std computed and cached; corrupt files named; the batched
RandomResizedCrop; ResNet-18's small-image stem; ``lucir prepare-subset`` (the reference's
``gen_imagenet_subset.py`` choice)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import lucir_fixtures  # noqa: F401  (one torch thread)
from lucir.augment import ImageAugment, augment_settings, crop_padding, random_resized_crop, resized_crop_boxes
from lucir.config import Config, ConfigError
from lucir.data import (IMAGENET_MEAN, IMAGENET_STD, STATS_FILE, DatasetError, FolderDataset, Source, TensorDataset,
                        channel_stats, class_order, decode_image, folder_transform, load_dataset_for,
                        load_imagefolder)

SIZES = ((13, 17), (16, 16), (12, 15), (17, 13))  # (width, height): at most 16 * 16 = 256 pixels each


def _write_folder(root, classes=5, train=12, test=(3, 3, 3, 1, 2), sizes=SIZES, big=None):
    """``root/{train,val}/c<k>/`` of PNG and JPEG files, RGB and grayscale, odd sizes; class k is brighter
    with k.  ``big`` = (split, class, (w, h)): one more, larger image there."""
    rng = np.random.RandomState(0)
    for split, counts in (("train", [train] * classes), ("val", list(test))):
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(counts[c]):
                w, h = sizes[i % len(sizes)]
                mode = "L" if i % 3 == 1 else "RGB"
                shape = (h, w) if mode == "L" else (h, w, 3)
                arr = np.clip(rng.normal(40 + 40 * c, 30, size=shape), 0, 255).astype(np.uint8)
                ext = "jpg" if i % 2 else "png"
                Image.fromarray(arr, mode).save(d / f"{i}.{ext}")
    if big is not None:
        split, c, (w, h) = big
        Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(root / split / f"c{c}" / "big.png")
    return root


def _cfg(root, **flat):
    base = dict(dataset="imagefolder", data_root=str(root), base_classes=3, phases=2, K=1, image_size=16,
                channels=3, augment="cifar", backbone="resnet32", epochs=2, batch_size=16, device="cpu",
                threads=1, eval_batch_size=64)
    base.update(flat)
    return Config.from_flat(base)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """5 classes x 12 train images, 3/3/3/1/2 test images, all at most 16x16 pixels."""
    return _write_folder(tmp_path_factory.mktemp("small"))


# ----------------------------------------------------------------------------- which path
def test_small_images_are_decoded_into_tensors_and_in_memory_false_forces_the_dataloader(small):
    auto = load_dataset_for(_cfg(small))
    assert isinstance(auto, TensorDataset) and auto.kind == "tensor"
    forced = load_dataset_for(_cfg(small, in_memory="false"))
    assert isinstance(forced, FolderDataset) and forced.kind == "folder"
    assert forced.class_names == auto.class_names == [f"c{k}" for k in range(5)]
    assert torch.equal(forced.train_y, auto.train_y) and torch.equal(forced.test_y, auto.test_y)


def test_one_image_larger_than_image_size_squared_keeps_the_folder_on_the_dataloader(tmp_path):
    root = _write_folder(tmp_path, big=("val", 4, (40, 40)))
    assert isinstance(load_dataset_for(_cfg(root)), FolderDataset)  # auto: one 40x40 image > 16x16
    forced = load_dataset_for(_cfg(root, in_memory="true"))
    assert isinstance(forced, TensorDataset) and tuple(forced.test_x.shape[1:]) == (3, 16, 16)
    assert isinstance(load_dataset_for(_cfg(root, image_size=40)), TensorDataset)  # 40 * 40 pixels fit


def test_the_dataloader_gets_the_configured_workers_or_the_runs_threads(small):
    assert load_dataset_for(_cfg(small, in_memory="false", workers=3)).num_workers == 3
    assert load_dataset_for(_cfg(small, in_memory="false", threads=2)).num_workers == 2
    assert load_dataset_for(_cfg(small, in_memory="false", threads=0)).num_workers == torch.get_num_threads()


# ----------------------------------------------------------------------------- shapes, channels, resizing
@pytest.mark.parametrize("channels", [1, 3])
def test_both_paths_give_channels_x_image_size_squared(small, channels):
    for in_memory in ("auto", "false"):
        cfg = _cfg(small, channels=channels, in_memory=in_memory, workers=1)
        data = load_dataset_for(cfg)
        assert data.image_shape() == (channels, 16, 16)
        src = Source(data, class_order(5, 1993), torch.device("cpu"))
        x, y = next(src.train_batches(torch.arange(20), 8, torch.Generator().manual_seed(0)))
        assert x.shape == (8, channels, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all()
        xe = torch.cat([b for b, _ in src.eval_batches("test", None, 5)])
        assert xe.shape == (len(data.test_y), channels, 16, 16)


def test_decoding_resizes_the_shorter_side_and_centre_crops_and_repeats_grey_to_rgb(small):
    data = load_imagefolder(small, image_size=16, channels=3, augment="crop", in_memory="true", workers=1)
    paths = [p for p, _ in sorted((str(p), 0) for p in (small / "train" / "c0").iterdir())]
    assert len(paths) == 12
    for k, p in enumerate(paths):
        x = data.train_x[k]  # ImageFolder order: sorted class folders, sorted files
        img = Image.open(p).convert("RGB")
        ref = img if img.size == (16, 16) else TF.center_crop(TF.resize(img, 16), [16, 16])
        assert torch.equal(x, TF.pil_to_tensor(ref)), p
        if Image.open(p).mode == "L":
            assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    # a 16 x 16 file is taken pixel for pixel
    exact = next(p for p in paths if Image.open(p).size == (16, 16))
    assert np.array_equal(decode_image(exact, 16, 3), np.asarray(Image.open(exact).convert("RGB")).transpose(2, 0, 1))
    grey = load_imagefolder(small, image_size=16, channels=1, augment="crop", in_memory="true", workers=1)
    assert grey.train_x.shape == (60, 1, 16, 16) and grey.test_x.shape == (12, 1, 16, 16)


def test_the_tensor_path_eval_is_normalise_only_and_the_dataloader_eval_matches_it(small):
    cfg = _cfg(small, augment="crop", workers=1)
    t = load_dataset_for(cfg)
    f = load_dataset_for(cfg.replace(in_memory="false"))
    assert t.mean == pytest.approx(f.mean) and t.std == pytest.approx(f.std)
    order = class_order(5, 1993)
    xt = torch.cat([b for b, _ in Source(t, order, torch.device("cpu")).eval_batches("test", None, 64)])
    xf = torch.cat([b for b, _ in Source(f, order, torch.device("cpu")).eval_batches("test", None, 64)])
    mean = torch.tensor(t.mean).view(1, -1, 1, 1)
    std = torch.tensor(t.std).view(1, -1, 1, 1)
    assert torch.allclose(xt, (t.test_x.float() / 255 - mean) / std, atol=1e-5)
    assert torch.allclose(xt, xf, atol=1e-5)  # same resize + centre crop on both paths


@pytest.mark.parametrize("augment", ["imagenet", "cifar", "crop", "none"])
@pytest.mark.parametrize("channels", [1, 3])
def test_in_memory_and_dataloader_paths_give_the_same_eval_inputs_for_every_augment(small, augment, channels):
    """Issue 17: with ``imagenet`` the in-memory path used to evaluate the S x S decode while the DataLoader does
    Resize(S * 256 / 224) + CenterCrop(S); now both give the same eval inputs, on the test split and on the
    training split (herding, imprinting and the NME class means read it), with the same statistics."""
    from lucir.data import eval_resize

    cfg = _cfg(small, augment=augment, channels=channels, in_memory="true", workers=1)
    t = load_dataset_for(cfg)
    f = load_dataset_for(cfg.replace(in_memory="false"))
    assert isinstance(t, TensorDataset) and isinstance(f, FolderDataset)
    assert t.mean == pytest.approx(f.mean) and t.std == pytest.approx(f.std)
    order = class_order(5, 1993)
    st, sf = Source(t, order, torch.device("cpu")), Source(f, order, torch.device("cpu"))
    for split in ("test", "train"):
        xt = torch.cat([b for b, _ in st.eval_batches(split, None, 64)])
        xf = torch.cat([b for b, _ in sf.eval_batches(split, None, 64)])
        assert xt.shape == xf.shape == (len(t.test_y if split == "test" else t.train_y), channels, 16, 16)
        assert torch.allclose(xt, xf, atol=1e-5), (split, float((xt - xf).abs().max()))
    assert eval_resize(augment, 16) == (18 if augment == "imagenet" else 16)
    assert eval_resize("imagenet", 224) == 256


def test_the_dataloader_path_checks_every_file_header_before_training(tmp_path, capsys):
    """Issue 17: a corrupt file is named before any training (not when its class's phase starts), in one line,
    also through ``lucir train``; ``verify_images=off`` skips the scan."""
    from lucir.cli import main
    from lucir.data import verify_images

    root = _write_folder(tmp_path / "d", classes=3, train=3, test=(1, 1, 1))
    bad = root / "train" / "c2" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then nonsense
    with pytest.raises(DatasetError, match=r"broken\.png") as info:
        load_dataset_for(_cfg(root, base_classes=1, in_memory="false", workers=1))
    assert "\n" not in str(info.value)
    data = load_dataset_for(_cfg(root, base_classes=1, in_memory="false", workers=1, verify_images="off",
                                 mean=[0.5] * 3, std=[0.25] * 3))  # given statistics: no file decoded here
    assert isinstance(data, FolderDataset)  # not scanned: found later, by the DataLoader
    verify_images([str(p) for p in sorted((root / "val").rglob("*.*"))], "header", progress=False)
    out = tmp_path / "out"
    rc = main(["train", "--dataset", "imagefolder", "--data-root", str(root), "--base", "1", "--phases", "2",
               "--set", "K=1", "--set", "image_size=16", "--set", "backbone=resnet32", "--set", "in_memory=false",
               "--device", "cpu", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.png" in err and err.strip().count("\n") == 0 and "Traceback" not in err, err


def test_a_full_image_check_finds_a_truncated_jpeg_that_the_header_scan_misses(tmp_path):
    from lucir.data import verify_images

    root = _write_folder(tmp_path, classes=3, train=3, test=(1, 1, 1))
    jpg = root / "val" / "c0" / "cut.jpg"  # a test image: the mean/std computation decodes none
    Image.fromarray(np.random.RandomState(1).randint(0, 256, (16, 16, 3)).astype(np.uint8)).save(jpg, quality=95)
    jpg.write_bytes(jpg.read_bytes()[:-200])
    cfg = _cfg(root, base_classes=1, in_memory="false", workers=1)
    assert isinstance(load_dataset_for(cfg), FolderDataset)  # "header" (the default): the header is fine
    with pytest.raises(DatasetError, match=r"cut\.jpg.*verify_images=full"):
        load_dataset_for(cfg.replace(verify_images="full"))
    with pytest.raises(ConfigError, match="verify_images='most'"):
        verify_images([str(jpg)], "most")


def test_augment_modes_map_to_pad_crop_flip_and_resized_crop():
    assert crop_padding(32) == 4 and crop_padding(8) == 1 and crop_padding(105) == 13 and crop_padding(4) == 1
    assert augment_settings("cifar", 32) == dict(pad=4, flip=True, resized_crop=False)
    assert augment_settings("crop", 8) == dict(pad=1, flip=False, resized_crop=False)
    assert augment_settings("none", 64) == dict(pad=0, flip=False, resized_crop=False)
    assert augment_settings("imagenet", 224)["resized_crop"] is True
    with pytest.raises(ValueError, match="augment='jitter'.*imagenet"):
        augment_settings("jitter", 32)


def test_digits_through_load_dataset_for_keeps_its_pad_1_crop_without_flip():
    from lucir_fixtures import digits, tiny_config

    d = load_dataset_for(tiny_config())
    ref = digits()
    assert (d.pad, d.flip, d.resized_crop) == (ref.pad, ref.flip, False) == (1, False, False)
    assert d.mean == ref.mean and d.std == ref.std and torch.equal(d.train_x, ref.train_x)
    mirrored = load_dataset_for(tiny_config(augment="cifar", mean=[0.5], std=[0.25]))
    assert (mirrored.pad, mirrored.flip) == (1, True) and mirrored.mean == (0.5,) and mirrored.std == (0.25,)


def test_folder_transforms_follow_the_augment_mode():
    from torchvision import transforms as T

    def kinds(tf):
        return [type(t).__name__ for t in tf.transforms]

    imnet = folder_transform("imagenet", 224, IMAGENET_MEAN, IMAGENET_STD, train=False)
    assert kinds(imnet)[:2] == ["Resize", "CenterCrop"] and imnet.transforms[0].size == 256  # Resize(256)+Crop(224)
    assert folder_transform("imagenet", 112, IMAGENET_MEAN, IMAGENET_STD, train=False).transforms[0].size == 128
    assert kinds(folder_transform("imagenet", 64, (0.5,), (0.2,), train=True))[:2] == ["RandomResizedCrop",
                                                                                       "RandomHorizontalFlip"]
    cifar = folder_transform("cifar", 40, (0.5,), (0.2,), train=True)
    assert kinds(cifar)[:4] == ["Resize", "CenterCrop", "RandomCrop", "RandomHorizontalFlip"]
    assert cifar.transforms[2].padding == crop_padding(40)
    assert "RandomHorizontalFlip" not in kinds(folder_transform("crop", 40, (0.5,), (0.2,), train=True))
    none = folder_transform("none", 40, (0.5,), (0.2,), train=True)
    assert not any(isinstance(t, (T.RandomCrop, T.RandomHorizontalFlip)) for t in none.transforms)


def test_dataloader_augmentation_is_seeded_and_independent_of_the_workers(small):
    data = load_dataset_for(_cfg(small, in_memory="false", workers=1))
    src = Source(data, class_order(5, 1993), torch.device("cpu"))
    idx = torch.arange(0, 60, 3)

    def epoch(workers, seed):
        data.num_workers = workers
        return torch.cat([x for x, _ in src.train_batches(idx, 8, torch.Generator().manual_seed(seed))])

    a = epoch(0, 1)
    assert torch.equal(a, epoch(1, 1)) and not torch.equal(a, epoch(0, 2))


# ----------------------------------------------------------------------------- mean / std
def test_mean_std_are_computed_once_and_cached_next_to_the_data(tmp_path, monkeypatch):
    root = _write_folder(tmp_path)
    cfg = _cfg(root, augment="crop", channels=1)
    first = load_dataset_for(cfg)
    m, s = channel_stats(first.train_x)
    assert first.mean == pytest.approx(m) and first.std == pytest.approx(s) and len(first.mean) == 1
    cache = json.loads((root / STATS_FILE).read_text())
    assert cache["16x16x1"]["mean"] == pytest.approx(list(m)) and cache["16x16x1"]["train_images"] == 60

    def boom(*a, **k):
        raise AssertionError("statistics recomputed although cached")

    monkeypatch.setattr("lucir.data.channel_stats", boom)
    assert load_dataset_for(cfg).mean == first.mean  # tensor path reads the cache
    assert load_dataset_for(cfg.replace(in_memory="false")).std == first.std  # so does the DataLoader path
    monkeypatch.undo()
    rgb = load_dataset_for(_cfg(root, augment="crop", channels=3))  # another key: computed and added
    assert len(rgb.mean) == 3 and set(json.loads((root / STATS_FILE).read_text())) == {"16x16x1", "16x16x3"}


def test_given_mean_std_and_imagenet_statistics_need_no_computation(tmp_path, monkeypatch):
    root = _write_folder(tmp_path, classes=3, train=3, test=(1, 1, 1))
    monkeypatch.setattr("lucir.data.channel_stats", lambda *a: pytest.fail("statistics computed"))
    assert load_dataset_for(_cfg(root, base_classes=1, mean=[0.1, 0.2, 0.3], std=[1, 2, 3])).std == (1.0, 2.0, 3.0)
    imnet = load_dataset_for(_cfg(root, base_classes=1, augment="imagenet"))
    assert imnet.mean == IMAGENET_MEAN and imnet.std == IMAGENET_STD and imnet.resized_crop
    assert not (root / STATS_FILE).exists()


def test_a_read_only_data_folder_is_simply_not_cached(tmp_path, monkeypatch):
    root = _write_folder(tmp_path, classes=3, train=3, test=(1, 1, 1))

    def read_only(path, obj):  # what a read-only folder does (chmod does not stop root, who runs CI here)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("lucir.checkpoint.atomic_write_json", read_only)
    data = load_dataset_for(_cfg(root, base_classes=1, augment="none"))
    assert all(math.isfinite(v) for v in data.mean + data.std) and len(data.mean) == 3
    assert not (root / STATS_FILE).exists()


# ----------------------------------------------------------------------------- corrupt files, uneven classes
def test_a_file_that_is_no_image_is_named_by_the_header_scan_and_the_decoder(tmp_path):
    root = _write_folder(tmp_path, classes=3, train=3, test=(1, 1, 1))
    bad = root / "train" / "c1" / "broken.png"
    bad.write_bytes(b"definitely not a PNG")
    for in_memory in ("auto", "true"):  # header scan; decoding without a scan
        with pytest.raises(DatasetError, match="broken.png"):
            load_dataset_for(_cfg(root, base_classes=1, in_memory=in_memory))


def test_a_truncated_jpeg_is_named_when_decoded_in_memory_and_in_the_dataloader(tmp_path, capsys):
    root = _write_folder(tmp_path, classes=3, train=3, test=(1, 1, 1))
    good = root / "val" / "c2" / "big.jpg"
    Image.fromarray(np.random.RandomState(1).randint(0, 256, (16, 16, 3)).astype(np.uint8)).save(good, quality=95)
    blob = good.read_bytes()
    good.write_bytes(blob[:-200])  # the header still reads: only decoding fails
    assert Image.open(good).size == (16, 16)
    with pytest.raises(DatasetError, match=r"big\.jpg"):
        load_dataset_for(_cfg(root, base_classes=1))
    data = load_dataset_for(_cfg(root, base_classes=1, in_memory="false", workers=1))
    src = Source(data, class_order(3, 1993), torch.device("cpu"))
    with pytest.raises(DatasetError, match=r"big\.jpg"):  # raised in a worker process, re-raised here
        list(src.eval_batches("test", None, 8))
    from lucir.cli import main

    rc = main(["train", "--dataset", "imagefolder", "--data-root", str(root), "--base", "1", "--phases", "2",
               "--set", "K=1", "--set", "image_size=16", "--set", "backbone=resnet32", "--device", "cpu", "--quiet",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "big.jpg" in err and "cannot decode image" in err


def test_bad_image_settings_fail_before_any_io(tmp_path):
    with pytest.raises(ConfigError, match="augment='blur'.*imagenet"):
        load_imagefolder(tmp_path / "nowhere", image_size=16, augment="blur")
    with pytest.raises(ConfigError, match="channels=2"):
        load_imagefolder(tmp_path / "nowhere", image_size=16, channels=2)
    with pytest.raises(ConfigError, match="in_memory='maybe'"):
        load_imagefolder(tmp_path / "nowhere", in_memory="maybe")


@pytest.mark.parametrize("in_memory", ["auto", "false"])
def test_a_tiny_run_completes_on_both_paths_with_uneven_test_classes(small, in_memory):
    import lucir

    cfg = _cfg(small, in_memory=in_memory, workers=1)
    kind = load_dataset_for(cfg).kind
    assert kind == ("tensor" if in_memory == "auto" else "folder")
    out = list(lucir.run(cfg))  # the run loads the data itself (lucir.data.load_dataset_for)
    assert [r.phase for r, _ in out] == [0, 1, 2]
    last = out[-1][0]
    assert last.classes_seen == 5 and len(last.acc_matrix_cnn) == 3
    for r, _ in out:
        assert all(math.isfinite(v) for v in (r.acc_cnn, r.acc_nme, r.avg_inc_acc_cnn, r.avg_inc_acc_nme))
        assert 0 <= r.acc_cnn <= 100
    # the state's model is ResNet-32 on 3 x 16 x 16 inputs
    assert out[-1][1]["model"]["backbone.conv1.weight"].shape == (16, 3, 3, 3)


# ----------------------------------------------------------------------------- batched RandomResizedCrop
def test_resized_crop_boxes_fit_the_image_and_follow_scale_and_ratio():
    b, h, w = 4000, 20, 30
    boxes = resized_crop_boxes(b, h, w, torch.Generator().manual_seed(0))
    x1, y1, x2, y2 = boxes.unbind(1)
    assert torch.all(x1 >= 0) and torch.all(y1 >= 0) and torch.all(x2 <= w) and torch.all(y2 <= h)
    cw, ch = x2 - x1, y2 - y1
    assert torch.all(cw >= 1) and torch.all(ch >= 1) and torch.equal(boxes, boxes.round())
    area = cw * ch / (h * w)
    assert area.min() >= 0.08 * 0.7 and area.max() <= 1.0  # rounding to whole pixels aside
    ratio = cw / ch
    assert ratio.min() >= 0.75 * 0.8 and ratio.max() <= 4 / 3 * 1.25
    assert len(set(x1.tolist())) > 5 and len(set(y1.tolist())) > 5  # random positions
    again = resized_crop_boxes(b, h, w, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_random_resized_crop_is_a_bilinear_resize_of_the_window():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (6, 3, 24, 24), generator=g, dtype=torch.uint8)
    boxes = resized_crop_boxes(6, 24, 24, torch.Generator().manual_seed(9))
    out = random_resized_crop(x, torch.Generator().manual_seed(9))
    assert out.shape == (6, 3, 24, 24) and out.dtype == torch.float32
    for k in range(6):
        x1, y1, x2, y2 = (int(v) for v in boxes[k])
        crop = x[k:k + 1, :, y1:y2, x1:x2].float()
        if (x2 - x1) <= 24 and (y2 - y1) <= 24:  # enlarging: plain bilinear (align_corners=False) inside
            ref = torch.nn.functional.interpolate(crop, size=(24, 24), mode="bilinear", align_corners=False)
            assert torch.allclose(out[k, :, 2:-2, 2:-2], ref[0, :, 2:-2, 2:-2], atol=1e-3)
    whole = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(whole, x.float(), atol=1e-4)  # the full window, unscaled, is the identity


def test_imagenet_mode_image_augment_is_seeded_and_stays_in_range():
    x = torch.randint(0, 256, (16, 3, 20, 20), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    aug = ImageAugment((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 0, True, torch.device("cpu"), resized_crop=True)
    a = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(5)))
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert a.min() >= lo - 1e-4 and a.max() <= hi + 1e-4
    flat = torch.full((4, 3, 20, 20), 200, dtype=torch.uint8)
    assert torch.allclose(aug(flat, torch.Generator().manual_seed(1)), aug.normalize(flat), atol=1e-4)


# ----------------------------------------------------------------------------- backbones
def test_resnet18_small_stem_has_no_max_pool_and_keeps_the_spatial_size():
    from lucir.models import ResNet18, make_backbone

    small, large = make_backbone("resnet18", 3, image_size=32), make_backbone("resnet18", 3, image_size=224)
    assert small.small_stem and not large.small_stem
    assert not make_backbone("resnet18", 3).small_stem  # default: the reference's ImageNet stem
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    seen = {}
    small.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("small", a[0].shape))
    large.blocks[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("large", a[0].shape))
    x = torch.randn(2, 3, 32, 32)
    assert small(x).shape == large(x).shape == (2, 512)
    assert seen["small"][-2:] == (32, 32)  # no stride, no max-pool before layer1
    assert seen["large"][-2:] == (8, 8)   # 7x7 stride 2 + max-pool stride 2
    assert isinstance(make_backbone("resnet18", 1, image_size=64), ResNet18)
    assert make_backbone("resnet18", 1, image_size=64).small_stem and not make_backbone("resnet18", 1,
                                                                                      image_size=65).small_stem


@pytest.mark.parametrize("size", [16, 40, 105])
def test_resnet32_and_resnet18_take_any_image_size(size):
    from lucir.models import make_backbone

    for name, dim in (("resnet32", 64), ("resnet18", 512)):
        net = make_backbone(name, 1, image_size=size).eval()
        assert net(torch.randn(2, 1, size, size)).shape == (2, dim)


# ----------------------------------------------------------------------------- prepare-subset
def _fake_imagenet(root, n=12):
    wnids = [f"n{1000 + 37 * k:08d}" for k in range(n)]
    for split, count in (("train", 3), ("val", 1)):
        for w in wnids:
            (root / split / w).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((6, 6, 3), 10 * i, np.uint8)).save(root / split / w / f"{w}_{i}.JPEG")
    return wnids


def test_prepare_subset_picks_the_seed_1993_classes_as_hard_links(tmp_path):
    from lucir.cli import main

    wnids = _fake_imagenet(tmp_path / "imagenet")
    out = tmp_path / "subset"
    assert main(["prepare-subset", "--imagenet", str(tmp_path / "imagenet"), "--out", str(out), "--classes", "5",
                 "--quiet"]) == 0
    expect = sorted(wnids[i] for i in class_order(12, 1993)[:5])
    state = np.random.get_state()
    try:  # the reference's own formulation (gen_imagenet_subset.py)
        np.random.seed(1993)
        ref = sorted(np.random.choice(sorted(wnids), 5, replace=False).tolist())
    finally:
        np.random.set_state(state)
    assert expect == ref
    for split in ("train", "val"):
        assert sorted(p.name for p in (out / split).iterdir()) == expect
        for w in expect:
            for f in (tmp_path / "imagenet" / split / w).iterdir():
                assert os.stat(out / split / w / f.name).st_ino == os.stat(f).st_ino  # a hard link
    manifest = json.loads((out / "subset.json").read_text())
    assert manifest["classes"] == expect and manifest["seed"] == 1993 and manifest["complete"]
    data = load_imagefolder(out)
    assert data.class_names == expect and len(data.train_samples) == 15 and len(data.test_samples) == 5


def test_prepare_subset_reruns_after_an_interruption_and_refuses_another_subset(tmp_path, monkeypatch):
    from lucir.prepare import prepare_subset

    _fake_imagenet(tmp_path / "imagenet")
    out = tmp_path / "subset"
    first = prepare_subset(tmp_path / "imagenet", out, classes=4, progress=False)
    w = first["classes"][1]
    # an interrupted run: one class folder never renamed into place, a half-filled temporary left behind
    (out / "train" / w).rename(out / "train" / f".{w}.partial")
    (out / "train" / f".{w}.partial" / sorted(os.listdir(out / "train" / f".{w}.partial"))[0]).unlink()
    again = prepare_subset(tmp_path / "imagenet", out, classes=4, progress=False)
    assert again["classes"] == first["classes"] and again["kept_classes"] == 7 and again["files"] == 3
    assert len(os.listdir(out / "train" / w)) == 3 and not (out / "train" / f".{w}.partial").exists()
    with pytest.raises(DatasetError, match="another subset"):
        prepare_subset(tmp_path / "imagenet", out, classes=4, seed=7, progress=False)
    # across file systems hard links fail: the files are copied, and the log says so
    import errno

    def no_link(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr("lucir.prepare.os.link", no_link)
    said = []
    copied = prepare_subset(tmp_path / "imagenet", tmp_path / "copy", classes=4, progress=False, log=said.append)
    assert copied["copied"] == 16 and copied["linked"] == 0 and any("copying" in s for s in said)
    src = tmp_path / "imagenet" / "train" / w / sorted(os.listdir(tmp_path / "imagenet" / "train" / w))[0]
    dst = tmp_path / "copy" / "train" / w / src.name
    assert dst.read_bytes() == src.read_bytes() and os.stat(dst).st_ino != os.stat(src).st_ino


def test_prepare_subset_bad_input_is_a_clear_error(tmp_path):
    from lucir.data import DatasetMissingError
    from lucir.prepare import prepare_subset

    with pytest.raises(DatasetMissingError, match="train/<wnid>"):
        prepare_subset(tmp_path / "nowhere", tmp_path / "out", progress=False)
    _fake_imagenet(tmp_path / "imagenet")
    with pytest.raises(ConfigError, match=r"classes=100 is invalid: allowed an integer in 2\.\.12"):
        prepare_subset(tmp_path / "imagenet", tmp_path / "out", progress=False)
