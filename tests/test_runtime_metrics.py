"""Cityscapes metric rules: confusion matrix, null classes, ignore, void predictions,
prediction-folder evaluation in both submission formats, model-dir evaluation."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from ddrnet.runtime.cityscapes import list_samples, load_train_ids
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import write_json
from ddrnet.runtime.labels import CLASS_NAMES, TRAIN_ID_TO_ID
from ddrnet.runtime.metrics import ConfusionMatrix, evaluate_model_dir, evaluate_prediction_dir, format_table
from runtime_fixtures import make_model_dir, write_tiny_cityscapes


def test_hand_computed_three_classes():
    # classes a, b, c; c never appears in ground truth or prediction -> null, out of the mean
    label = np.array([[0, 0, 1, 255],
                      [1, 1, 0, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 2],  # the 2 sits on an ignore pixel: not counted anywhere
                     [1, 0, 0, 0]], dtype=np.uint8)
    matrix = ConfusionMatrix(3, class_names=["a", "b", "c"])
    matrix.update(pred, label)
    result = matrix.result()
    # a: gt at 3 pixels, predicted at 3 valid pixels, both at 2 -> 2 / (3 + 3 - 2)
    # b: gt 3, predicted 3, both 2 -> 2 / 4
    assert result["per_class_iou"] == {"a": pytest.approx(0.5), "b": pytest.approx(0.5), "c": None}
    assert result["miou"] == pytest.approx(0.5)
    assert result["pixel_acc"] == pytest.approx(4 / 6)
    assert result["num_images"] == 1


def test_class_predicted_but_absent_counts_as_zero():
    label = np.array([[0, 0, 0, 0]], dtype=np.uint8)
    pred = np.array([[0, 0, 0, 1]], dtype=np.uint8)
    matrix = ConfusionMatrix(3, class_names=["a", "b", "c"])
    matrix.update(pred, label)
    result = matrix.result()
    assert result["per_class_iou"] == {"a": pytest.approx(0.75), "b": 0.0, "c": None}
    assert result["miou"] == pytest.approx(0.375)


def test_void_prediction_is_a_miss_but_no_false_positive():
    label = np.array([[0, 1]], dtype=np.uint8)
    pred = np.array([[255, 1]], dtype=np.uint8)
    matrix = ConfusionMatrix(2, class_names=["a", "b"])
    matrix.update(pred, label)
    result = matrix.result()
    assert result["per_class_iou"] == {"a": 0.0, "b": 1.0}
    assert result["pixel_acc"] == pytest.approx(0.5)


def test_accumulates_over_images_not_averaged_per_image():
    matrix = ConfusionMatrix(2, class_names=["a", "b"])
    matrix.update(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]]))  # a perfect alone
    matrix.update(np.array([[1]]), np.array([[0]]))
    result = matrix.result()
    assert result["per_class_iou"]["a"] == pytest.approx(4 / 5)  # per-image mean would be 0.5
    assert result["per_class_iou"]["b"] == 0.0
    assert result["num_images"] == 2


def test_matches_a_dense_reference_on_random_data():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, size=(64, 64)).astype(np.uint8)
    label[rng.random((64, 64)) < 0.1] = 255
    pred = rng.integers(0, 19, size=(64, 64)).astype(np.uint8)
    matrix = ConfusionMatrix()
    matrix.update(pred, label)
    result = matrix.result()
    valid = label != 255
    for c, name in enumerate(CLASS_NAMES):
        inter = np.sum((pred == c) & (label == c) & valid)
        union = np.sum(((pred == c) | (label == c)) & valid)
        assert result["per_class_iou"][name] == pytest.approx(inter / union)
    assert result["pixel_acc"] == pytest.approx(np.mean(pred[valid] == label[valid]))


def test_errors_size_mismatch_bad_label_and_nothing_to_evaluate():
    matrix = ConfusionMatrix()
    with pytest.raises(DDRNetError, match="labels are never resized"):
        matrix.update(np.zeros((4, 4), np.uint8), np.zeros((8, 8), np.uint8))
    with pytest.raises(DDRNetError, match="label value 40"):
        matrix.update(np.zeros((1, 1), np.uint8), np.full((1, 1), 40, np.uint8))
    with pytest.raises(DDRNetError, match="prediction values must be 0..255"):
        matrix.update(np.full((1, 1), -1), np.zeros((1, 1), np.uint8))
    assert matrix.num_images == 0 and matrix.matrix.sum() == 0  # failed updates add nothing
    matrix.update(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8))
    with pytest.raises(DDRNetError, match="no labelled"):
        matrix.result()


def test_format_table_and_write_json(tmp_path):
    matrix = ConfusionMatrix()
    matrix.update(np.array([[0, 1]], np.uint8), np.array([[0, 0]], np.uint8))
    result = matrix.result()
    table = format_table(result)
    assert "road" in table and "bicycle" in table and "mIoU" in table
    assert [line for line in table.splitlines() if line.startswith("bicycle")][0].split()[-1] == "-"
    path = str(tmp_path / "sub" / "eval.json")
    write_json(result, path)
    loaded = json.load(open(path))
    assert loaded == result and loaded["per_class_iou"]["bicycle"] is None
    assert os.listdir(os.path.dirname(path)) == ["eval.json"]  # no temporary left beside it


# -- prediction folders ------------------------------------------------------------------------

@pytest.fixture()
def dataset(tmp_path):
    root = str(tmp_path / "data")
    keys = write_tiny_cityscapes(root, "val", count=2, hw=(12, 20))
    return root, keys


def _write_predictions(root, keys, pred_dir, fmt, seed=0):
    """Predictions = ground truth with some pixels changed; returns the expected result."""
    rng = np.random.default_rng(seed)
    matrix = ConfusionMatrix()
    os.makedirs(pred_dir, exist_ok=True)
    for (_, label_path), key in zip(list_samples(root, "val"), keys):
        train_ids = load_train_ids(label_path)
        pred = train_ids.copy()
        noise = rng.random(pred.shape) < 0.3
        pred[noise] = rng.integers(0, 19, size=int(noise.sum()))
        pred[0, 0] = 255  # a void prediction (an ignored class)
        matrix.update(pred, train_ids)
        out = TRAIN_ID_TO_ID[pred] if fmt == "labelids" else pred
        cv2.imwrite(os.path.join(pred_dir, key + "_pred.png"), out)
    return matrix.result()


@pytest.mark.parametrize("fmt", ["labelids", "trainids"])
def test_prediction_dir_both_formats(dataset, tmp_path, fmt):
    root, keys = dataset
    pred_dir = str(tmp_path / "pred")
    expected = _write_predictions(root, keys, pred_dir, fmt)
    cv2.imwrite(os.path.join(pred_dir, "legend.png"), np.zeros((2, 2), np.uint8))  # not a frame: skipped
    result = evaluate_prediction_dir(pred_dir, root, "val", pred_format=fmt, progress=False)
    assert result == expected
    assert 0.0 < result["miou"] < 1.0 and result["num_images"] == 2


def test_prediction_dir_errors(dataset, tmp_path):
    root, keys = dataset
    pred_dir = str(tmp_path / "pred")
    _write_predictions(root, keys, pred_dir, "labelids")
    with pytest.raises(DDRNetError, match="is not a trainId"):
        evaluate_prediction_dir(pred_dir, root, "val", pred_format="trainids", progress=False)
    with pytest.raises(DDRNetError, match="--pred-format"):
        evaluate_prediction_dir(pred_dir, root, "val", pred_format="color", progress=False)

    first = os.path.join(pred_dir, keys[0] + "_pred.png")
    cv2.imwrite(first, np.zeros((6, 10), np.uint8))
    with pytest.raises(DDRNetError, match="6x10 but its label is 12x20"):
        evaluate_prediction_dir(pred_dir, root, "val", progress=False)
    open(first, "wb").write(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DDRNetError, match="not a readable image"):
        evaluate_prediction_dir(pred_dir, root, "val", progress=False)
    os.remove(first)
    with pytest.raises(DDRNetError, match="no prediction for " + keys[0]):
        evaluate_prediction_dir(pred_dir, root, "val", progress=False)
    with pytest.raises(DDRNetError, match="no such prediction folder"):
        evaluate_prediction_dir(str(tmp_path / "none"), root, "val", progress=False)


def test_evaluate_model_dir_at_full_label_resolution(dataset, tmp_path):
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.imageio import read_image

    root, _ = dataset
    # fixed 8x16 network on 12x20 frames: masks are resized back, labels never
    predictor = Predictor(make_model_dir(str(tmp_path / "m"), shape=(1, 3, 8, 16)))
    expected = ConfusionMatrix()
    for image_path, label_path in list_samples(root, "val"):
        expected.update(predictor(read_image(image_path)), load_train_ids(label_path))
    result = evaluate_model_dir(predictor, root, "val", progress=False)
    assert result == expected.result()
    assert evaluate_model_dir(predictor, root, "val", progress=False, limit=1)["num_images"] == 1


def test_predict_labelids_then_eval_pred_dir_equals_evaluating_the_model(dataset, tmp_path):
    """The submission path end to end: `predict --format labelids` over the val images, then
    `eval --pred-dir`, gives exactly the model's own evaluation; the other formats hold what they say."""
    from ddrnet.cli import main
    from ddrnet.runtime import Predictor
    from ddrnet.runtime.imageio import read_image

    root, keys = dataset
    model = make_model_dir(str(tmp_path / "m"), shape=(1, 3, 8, 16))
    images = os.path.join(root, "leftImg8bit", "val")
    outs = {fmt: str(tmp_path / fmt) for fmt in ("labelids", "trainids", "color", "overlay")}
    for fmt, out in outs.items():
        assert main(["predict", "--model", model, "--input", images, "--out", out, "--format", fmt]) == 0
    eval_json = str(tmp_path / "eval.json")
    assert main(["eval", "--pred-dir", outs["labelids"], "--data-root", root, "--json", eval_json]) == 0
    predictor = Predictor(model)
    assert json.load(open(eval_json)) == evaluate_model_dir(predictor, root, "val", progress=False)

    image = list_samples(root, "val")[0][0]
    name = os.path.splitext(os.path.basename(image))[0] + ".png"
    mask = predictor(read_image(image))
    read = {fmt: cv2.imread(os.path.join(out, name), cv2.IMREAD_UNCHANGED) for fmt, out in outs.items()}
    assert np.array_equal(read["trainids"], mask) and np.array_equal(read["labelids"], TRAIN_ID_TO_ID[mask])
    assert np.array_equal(read["color"], predictor.colorize(mask))
    assert read["overlay"].shape == (12, 20, 3) and not np.array_equal(read["overlay"], read["color"])


def test_eval_json_may_replace_its_own_report_never_an_input(dataset, tmp_path):
    from ddrnet.cli import main

    root, keys = dataset
    model = make_model_dir(str(tmp_path / "m"), shape=(1, 3, 8, 16))
    pred_dir = str(tmp_path / "pred")
    _write_predictions(root, keys, pred_dir, "labelids")
    for args in (["--model", model, "--json", os.path.join(model, "eval.json")],
                 ["--pred-dir", pred_dir, "--json", os.path.join(pred_dir, "eval.json")]):
        for _ in range(2):  # the second run replaces the first one's report: not an input
            assert main(["eval", "--data-root", root] + args) == 0
    label = list_samples(root, "val")[0][1]
    for args, bad in ((["--model", model], os.path.join(model, "deploy.yaml")),
                      (["--pred-dir", pred_dir], os.path.join(pred_dir, keys[0] + "_pred.png")),
                      (["--model", model], label)):
        before = open(bad, "rb").read()
        assert main(["eval", "--data-root", root, "--json", bad] + args) == 2
        assert open(bad, "rb").read() == before
