"""Synthetic generator, Cityscapes layout reader, transforms, dataset and loader."""
from __future__ import annotations

import filecmp
import os
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ddrnet.runtime.cityscapes import city_frame_key, list_samples, load_train_ids
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.labels import CLASS_NAMES, ID_TO_TRAIN_ID, LABELS
from ddrnet.train import data, scene, synth

SIZE = (64, 128)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return synth.generate(str(tmp_path_factory.mktemp("synth")), 4, 3, size=SIZE, seed=3)


def _copy(root: str, tmp_path) -> str:
    dst = str(tmp_path / "copy")
    shutil.copytree(root, dst)
    return dst


def _files(root: str):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# --- generator -------------------------------------------------------------------------------

def test_generator_writes_the_official_layout(data_root):
    pairs = list_samples(data_root, "train")
    assert len(pairs) == 4 and len(list_samples(data_root, "val")) == 3
    image, label = pairs[0]
    assert image.endswith(os.path.join("leftImg8bit", "train", "aachen", "aachen_000000_000019_leftImg8bit.png"))
    assert label.endswith(os.path.join("gtFine", "train", "aachen", "aachen_000000_000019_gtFine_labelIds.png"))
    cities = {os.path.basename(os.path.dirname(img)) for img, _ in list_samples(data_root, "val")}
    assert cities == set(synth.VAL_CITIES)
    for img, lab in pairs:
        stem = lab[:-len("labelIds.png")]
        assert cv2.imread(img).shape == SIZE + (3,)
        ids = cv2.imread(lab, cv2.IMREAD_UNCHANGED)
        assert ids.shape == SIZE and ids.dtype == np.uint8
        assert np.array_equal(cv2.imread(stem + "labelTrainIds.png", cv2.IMREAD_UNCHANGED), ID_TO_TRAIN_ID[ids])
        colours = {lb.id: lb.color[::-1] for lb in LABELS if lb.id >= 0}
        expected = np.array([colours[i] for i in range(34)], np.uint8)[ids]
        assert np.array_equal(cv2.imread(stem + "color.png"), expected)
    assert not [f for f in _files(data_root) if ".tmp" in f]


def test_generator_is_deterministic_and_frames_do_not_depend_on_the_count(tmp_path):
    a = synth.generate(str(tmp_path / "a"), 2, 1, size=SIZE, seed=5)
    b = synth.generate(str(tmp_path / "b"), 3, 1, size=SIZE, seed=5)
    files_a = [f for f in _files(a) if f != "synth.json"]
    assert set(files_a) < set(_files(b))
    match, mismatch, errors = filecmp.cmpfiles(a, b, files_a, shallow=False)
    assert not mismatch and not errors
    before = {f: open(os.path.join(a, f), "rb").read() for f in files_a}
    synth.generate(a, 2, 1, size=SIZE, seed=5)  # re-run over the same folder: same bytes
    assert all(open(os.path.join(a, f), "rb").read() == data for f, data in before.items())
    other, _ = scene.render(6, "train", 0, SIZE)
    assert not np.array_equal(other, cv2.imread(list_samples(a, "train")[0][0]))


def test_frames_use_only_drawn_ids_and_cover_the_classes():
    seen = set()
    for i in range(8):
        bgr, ids = scene.render(0, "train", i, (128, 256))
        assert bgr.shape == (128, 256, 3) and bgr.dtype == np.uint8
        values = set(np.unique(ids).tolist())
        assert values <= set(scene.DRAWN_IDS) | {scene.EGO, scene.BORDER}
        seen |= values
    assert set(scene.DRAWN_IDS) <= seen
    assert scene.EGO in seen  # ignore-mapped pixels exist


def test_colour_alone_does_not_give_the_class():
    """Fit the best class per colour on some frames: on other frames it gets a poor mIoU, and
    class pairs that context must separate share much of their colour histogram."""
    def frames(split, n):
        for i in range(n):
            bgr, ids = scene.render(0, split, i, (128, 256))
            q = (bgr >> 4).astype(np.int64)
            yield (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2], ID_TO_TRAIN_ID[ids]

    hist = np.zeros((19, 4096), np.int64)
    for colour, train_id in frames("train", 12):
        keep = train_id != 255
        np.add.at(hist, (train_id[keep], colour[keep]), 1)
    share = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    name = {n: i for i, n in enumerate(CLASS_NAMES)}
    for a, b in (("road", "sidewalk"), ("vegetation", "terrain"), ("car", "building"), ("sky", "building")):
        assert np.minimum(share[name[a]], share[name[b]]).sum() > 0.1, (a, b)
    best = hist.argmax(0)
    conf = np.zeros((19, 19), np.int64)
    for colour, train_id in frames("val", 6):
        keep = train_id != 255
        conf += np.bincount(train_id[keep] * 19 + best[colour[keep]], minlength=361).reshape(19, 19)
    tp = np.diag(conf)
    present = conf.sum(1) > 0
    iou = tp[present] / (conf.sum(0) + conf.sum(1) - tp)[present]
    assert iou.mean() < 0.3


def test_generate_rejects_a_file_as_output_and_an_empty_request(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(DDRNetError, match="not a folder"):
        synth.generate(str(target), 1, 1, size=SIZE)
    with pytest.raises(DDRNetError, match="at least one frame"):
        synth.generate(str(tmp_path / "d"), 0, 0, size=SIZE)


def test_generator_never_writes_into_a_data_set_it_did_not_write(data_root, tmp_path):
    real = _copy(data_root, tmp_path)
    os.remove(os.path.join(real, synth.RECIPE))  # what a Cityscapes root looks like: same names, no recipe
    before = {f: os.path.getmtime(os.path.join(real, f)) for f in _files(real)}
    with pytest.raises(DDRNetError, match=r"copy: holds a data set this generator did not write \(leftImg8bit/"):
        synth.generate(real, 1, 1, size=SIZE, seed=9)
    assert {f: os.path.getmtime(os.path.join(real, f)) for f in _files(real)} == before
    again = synth.generate(str(tmp_path / "own"), 1, 0, size=SIZE, seed=1)
    assert synth.generate(again, 1, 1, size=SIZE, seed=2) == again  # its own output may be rewritten
    assert len(list_samples(again, "val")) == 1


def test_calibration_recipe_is_built_in_and_equals_the_documented_file(tmp_path, monkeypatch):
    from ddrnet.cli import main
    from ddrnet.compress import calib

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    documented = calib.load_recipe(os.path.join(repo, "calib_data", "synthetic.yaml"))
    assert calib.load_recipe(None) == documented
    # outside the source tree, without --recipe: the built-in recipe (made tiny here)
    monkeypatch.setattr(calib, "SYNTHETIC_RECIPE", {"seed": 0, "count": 2, "size": SIZE})
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "--calib-synth", "--out", "calib"]) == 0
    assert len(calib.calibration_images("calib")) == 2


def test_cli_synth_writes_the_set_and_rejects_a_bad_size(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "ddrnet", "data", "synth", "--out", str(out), "--train", "2", "--val", "1",
           "--size", "48x96", "--seed", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 train + 1 val" in done.stdout
    assert cv2.imread(list_samples(str(out), "val")[0][0]).shape == (48, 96, 3)
    bad = subprocess.run(cmd[:-4] + ["--size", "48by96"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "--size" in bad.stderr and "Traceback" not in bad.stderr


# --- layout reader and its errors ------------------------------------------------------------

def test_city_frame_key():
    assert city_frame_key("/x/aachen_000012_000019_leftImg8bit.png") == "aachen_000012_000019"
    assert city_frame_key("monchengladbach_000000_000019.png") == "monchengladbach_000000_000019"
    assert city_frame_key("a/lindau_000001_000019_gtFine_labelIds.png") == "lindau_000001_000019"
    with pytest.raises(DDRNetError, match="holiday.png"):
        city_frame_key("holiday.png")


def test_missing_folders_and_images_name_the_path(data_root, tmp_path):
    with pytest.raises(DDRNetError, match="nowhere"):
        list_samples(str(tmp_path / "nowhere"), "train")
    with pytest.raises(DDRNetError, match=os.path.join("leftImg8bit", "test")):
        list_samples(data_root, "test")
    root = _copy(data_root, tmp_path)
    shutil.rmtree(os.path.join(root, "gtFine", "val"))
    with pytest.raises(DDRNetError, match=os.path.join("gtFine", "val")):
        list_samples(root, "val")
    shutil.rmtree(os.path.join(root, "leftImg8bit", "train"))
    os.makedirs(os.path.join(root, "leftImg8bit", "train", "aachen"))
    with pytest.raises(DDRNetError, match="no \\*_leftImg8bit.png images"):
        list_samples(root, "train")


def test_image_without_label_names_the_image(data_root, tmp_path):
    root = _copy(data_root, tmp_path)
    image, label = list_samples(root, "train")[1]
    os.remove(label)
    with pytest.raises(DDRNetError) as err:
        list_samples(root, "train")
    assert image in str(err.value) and "without its label" in str(err.value)


def test_label_checks_name_the_file(data_root, tmp_path):
    root = _copy(data_root, tmp_path)
    image, label = list_samples(root, "train")[0]
    ids = cv2.imread(label, cv2.IMREAD_UNCHANGED)
    assert np.array_equal(load_train_ids(label, SIZE), ID_TO_TRAIN_ID[ids])
    with pytest.raises(DDRNetError) as err:
        load_train_ids(label, (SIZE[0] + 1, SIZE[1]), image)
    assert label in str(err.value) and image in str(err.value)
    ids[0, :3] = (34, 255, 40)
    cv2.imwrite(label, ids)
    with pytest.raises(DDRNetError) as err:
        load_train_ids(label)
    assert label in str(err.value) and "[34, 40, 255]" in str(err.value)
    with open(label, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DDRNetError, match="corrupt"):
        load_train_ids(label)


# --- transforms ------------------------------------------------------------------------------


def _pattern(h=40, w=60):
    """An image whose label is a function of its pixels, to check they move together."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (h, w)).astype(np.uint8)
    image = np.repeat(label[..., None] * 10.0, 3, axis=2).astype(np.float32)
    return image, label


def test_resize_step_scaling_draws_the_steps_and_keeps_labels_nearest():
    image, label = _pattern()
    t = data.ResizeStepScaling(0.5, 2.0, 0.25)
    rng = np.random.default_rng(1)
    widths = set()
    for _ in range(80):
        im, lab = t(image, label, rng)
        assert im.shape[:2] == lab.shape
        widths.add(lab.shape[1])
        assert set(np.unique(lab)) <= set(np.unique(label))
    assert widths == {int(round(s * 60)) for s in np.arange(0.5, 2.01, 0.25)}


def test_random_padding_crop_size_and_padding():
    image, label = _pattern(40, 60)
    im, lab = data.RandomPaddingCrop([32, 24])(image, label, np.random.default_rng(0))
    assert im.shape == (24, 32, 3) and lab.shape == (24, 32)
    im, lab = data.RandomPaddingCrop([80, 50])(image, label, np.random.default_rng(0))
    assert im.shape == (50, 80, 3)
    assert (lab[40:] == 255).all() and (lab[:, 60:] == 255).all()
    assert (im[40:] == 127.5).all() and np.array_equal(lab[:40, :60], label)


def test_flip_moves_image_and_label_together():
    image, label = _pattern()
    flip = data.RandomHorizontalFlip()
    rng = np.random.default_rng(0)
    flipped = 0
    for _ in range(20):
        im, lab = flip(image, label, rng)
        assert np.array_equal(im[..., 0], lab * 10.0)
        flipped += not np.array_equal(lab, label)
    assert 0 < flipped < 20


def test_random_distort_matches_pil_image_enhance():
    pil = pytest.importorskip("PIL.Image")
    enhance = pytest.importorskip("PIL.ImageEnhance")
    rgb = cv2.cvtColor(scene.render(0, "val", 0, SIZE)[0], cv2.COLOR_BGR2RGB)
    t = data.RandomDistort(0.4, 1, 0.4, 1, 0.4, 1, 18, 0)
    for op, pil_op in (("brightness", enhance.Brightness), ("contrast", enhance.Contrast),
                       ("saturation", enhance.Color)):
        factor = np.random.default_rng(7).uniform(0.6, 1.4)
        ours = t._apply(op, rgb.astype(np.float32), np.random.default_rng(7))
        theirs = np.asarray(pil_op(pil.fromarray(rgb)).enhance(factor)).astype(np.float32)
        assert np.abs(ours - theirs).max() <= 1.5, op
    hue = t._apply("hue", rgb.astype(np.float32), np.random.default_rng(7))
    assert hue.shape == rgb.shape and 0 <= hue.min() and hue.max() <= 255


def test_random_distort_keeps_the_label_and_normalize_scales():
    image, label = _pattern()
    im, lab = data.RandomDistort()(image, label, np.random.default_rng(3))
    assert lab is label and im.dtype == np.float32 and im.min() >= 0 and im.max() <= 255
    norm, _ = data.Normalize()(np.full((2, 2, 3), 255.0, np.float32), None, None)
    assert np.allclose(norm, 1.0)


def test_build_transforms_reads_paddleseg_entries_and_refuses_mistakes():
    compose = data.build_transforms([
        {"type": "ResizeStepScaling", "min_scale_factor": 0.5, "max_scale_factor": 2.0, "scale_step_size": 0.25},
        {"type": "RandomPaddingCrop", "crop_size": [48, 32]},
        {"type": "RandomHorizontalFlip"},
        {"type": "RandomDistort", "brightness_range": 0.4, "contrast_range": 0.4, "saturation_range": 0.4},
        {"type": "Normalize"}], train=True)
    assert [type(t).__name__ for t in compose.transforms] == [
        "ResizeStepScaling", "RandomPaddingCrop", "RandomHorizontalFlip", "RandomDistort", "Normalize"]
    bgr = scene.render(0, "train", 0, SIZE)[0]
    im, lab = compose(bgr, ID_TO_TRAIN_ID[scene.render(0, "train", 0, SIZE)[1]], np.random.default_rng(0))
    assert im.shape == (3, 32, 48) and lab.shape == (32, 48) and im.dtype == np.float32
    with pytest.raises(DDRNetError, match="unknown type 'Blur'"):
        data.build_transforms([{"type": "Blur"}], train=True)
    with pytest.raises(DDRNetError, match="RandomPaddingCrop.*crop"):
        data.build_transforms([{"type": "RandomPaddingCrop", "crop": [1, 1]}], train=True)
    with pytest.raises(DDRNetError, match="RandomHorizontalFlip is random"):
        data.build_transforms([{"type": "RandomHorizontalFlip"}, {"type": "Normalize"}], train=False)


# --- dataset and loader ----------------------------------------------------------------------

def test_val_dataset_is_full_resolution_normalised_rgb(data_root):
    ds = data.CityscapesDataset(data_root, "val")
    im, lab = ds[1]
    assert im.shape == (3,) + SIZE and im.dtype == np.float32
    assert lab.shape == SIZE and lab.dtype == np.int64
    image, label = ds.samples[1]
    rgb = cv2.imread(image)[..., ::-1].transpose(2, 0, 1) / 255.0
    assert np.allclose(im, (rgb - 0.5) / 0.5, atol=1e-6)
    assert np.array_equal(lab, ID_TO_TRAIN_ID[cv2.imread(label, cv2.IMREAD_UNCHANGED)])
    assert set(np.unique(lab)) <= set(range(19)) | {255}


def test_dataset_reports_a_corrupt_image(data_root, tmp_path):
    root = _copy(data_root, tmp_path)
    image = list_samples(root, "val")[0][0]
    with open(image, "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DDRNetError) as err:
        data.CityscapesDataset(root, "val")[0]
    assert image in str(err.value)


def _train_set(root):
    transforms = data.build_transforms([
        {"type": "ResizeStepScaling", "min_scale_factor": 0.5, "max_scale_factor": 2.0, "scale_step_size": 0.25},
        {"type": "RandomPaddingCrop", "crop_size": [64, 48]},
        {"type": "RandomHorizontalFlip"},
        {"type": "RandomDistort"},
        {"type": "Normalize"}], train=True)
    return data.CityscapesDataset(root, "train", transforms)


def _epochs(loader, n):
    """The loader's iterations split into n epochs of equal length."""
    batches = [(im.numpy(), lab.numpy()) for im, lab in data.batches(loader)]
    size = len(batches) // n
    return [batches[i * size:(i + 1) * size] for i in range(n)]


def test_loader_batches_are_reproducible_across_worker_counts_and_new_each_epoch(data_root):
    ds = _train_set(data_root)
    sigchld = signal.getsignal(signal.SIGCHLD)
    two = _epochs(data.build_loader(ds, 2, seed=4, total=4, num_workers=2), 2)
    # Paddle's workers' SIGCHLD handler is gone with them (train/compat.shutdown_loader says why)
    assert signal.getsignal(signal.SIGCHLD) is sigchld
    assert len(two[0]) == 2
    im, lab = two[0][0]
    assert im.shape == (2, 3, 48, 64) and im.dtype == np.float32
    assert lab.shape == (2, 48, 64) and lab.dtype == np.int64
    zero = _epochs(data.build_loader(ds, 2, seed=4, total=4, num_workers=0), 2)
    for epoch_a, epoch_b in zip(two, zero):
        for (ia, la), (ib, lb) in zip(epoch_a, epoch_b):
            assert np.array_equal(ia, ib) and np.array_equal(la, lb)
    other = _epochs(data.build_loader(ds, 2, seed=5, total=2, num_workers=0), 1)
    assert not np.array_equal(other[0][0][0], zero[0][0][0])
    # same order every epoch without shuffling, yet each epoch augments anew
    fixed = _epochs(data.build_loader(ds, 4, seed=4, total=2, shuffle=False), 2)
    assert not np.array_equal(fixed[0][0][0], fixed[1][0][0])
    # resuming at iteration 3 gives exactly the uninterrupted run's 4th batch
    resumed = _epochs(data.build_loader(ds, 2, seed=4, start=3, total=4), 1)
    assert np.array_equal(resumed[0][0][0], zero[1][1][0])


def test_loader_workers_start_after_the_parent_used_opencv_threads(data_root):
    """A forked worker must not touch OpenCV's thread pool set-up (that deadlocked the 2nd epoch)."""
    script = (
        "import sys, numpy as np, cv2\n"
        "from ddrnet.train import data\n"
        "ds = data.CityscapesDataset(sys.argv[1], 'train')\n"
        "loader = data.build_loader(ds, 2, shuffle=False, num_workers=1)\n"
        "for epoch in range(2):\n"
        "    cv2.resize(np.zeros((1500, 1500, 3), np.float32), (2500, 2500))  # parent's pool busy\n"
        "    assert len([b for b in loader]) == 2\n")
    done = subprocess.run([sys.executable, "-c", script, data_root], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
