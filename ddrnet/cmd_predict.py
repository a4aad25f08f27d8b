"""Segment images with an exported model (runtime only) or a checkpoint (Paddle).

  ddrnet predict --model export/fp32 --input street.png --out pred/ --format overlay
  ddrnet predict --weights runs/x/best_model --input leftImg8bit/val --out pred/ --format labelids

Formats: color (class colours), overlay (colours over the image), trainids (0..18, 255 ignore),
labelids (Cityscapes ids: the benchmark submission format, `<name>.png` per input image).

Every output is `--out/<input name>.png`. Before any work the run refuses an output that would
replace an input image (e.g. `--out .` beside street.png, or `--input DIR --out DIR`) and two inputs
that would write the same output (a/x.png and b/x.jpg). The --out folder is created with the first
image written. An unreadable image stops the run (`--on-error stop`, the default; the error line
says how many images were written) or is skipped, logged and counted in the summary (`--on-error skip`).
"""
from __future__ import annotations

import argparse
import logging
from typing import Dict, List, Tuple

from ddrnet.runtime.augment import add_mode_arguments
from ddrnet.runtime.cliargs import add_runtime_options

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
FORMATS = ("color", "overlay", "trainids", "labelids")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="exported model folder (with deploy.yaml)")
    src.add_argument("--weights", "--model_path", dest="weights", help="checkpoint folder or .pdparams (needs Paddle)")
    p.add_argument("--model-name", help="architecture for bare .pdparams (e.g. ddrnet23)")
    p.add_argument("--config", help="training config: the architecture for bare .pdparams, its test_config")
    p.add_argument("--input", "--image_path", dest="input", required=True,
                   help="an image, a folder (searched recursively) or a .txt list of image paths")
    p.add_argument("--out", "--save_dir", dest="out", required=True,
                   help="output folder (created when the first image is written)")
    p.add_argument("--format", choices=FORMATS, default="overlay")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                   help="an unreadable image: stop the run (default) or skip it and count it in the summary")
    add_runtime_options(p)
    add_mode_arguments(p, "--aug_pred")  # PaddleSeg predict.py's multi-scale / flip / sliding-window modes
    p.add_argument("--custom_color", nargs="+", type=int, help=argparse.SUPPRESS)


def list_images(path: str) -> List[str]:
    """The image itself, every image under a folder (recursively, sorted), or the images a .txt lists."""
    import os

    from ddrnet.runtime.errors import DDRNetError

    if os.path.isfile(path) and path.lower().endswith(".txt"):  # PaddleSeg's list: first column, relative
        with open(path, encoding="utf-8") as f:
            listed = [os.path.join(os.path.dirname(path), line.split()[0]) for line in f if line.strip()]
        if not listed:
            raise DDRNetError("{}: an empty image list".format(path))
        return listed
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DDRNetError("{}: no such file or folder".format(path))
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                   if f.lower().endswith(IMAGE_EXTS))
    if not found:
        raise DDRNetError("{}: no images ({})".format(path, " ".join(IMAGE_EXTS)))
    return found


def plan_outputs(images: List[str], out: str) -> List[Tuple[str, str]]:
    """(image, output PNG) pairs; refuses an output that is an input image or one that two inputs share."""
    import os

    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.fileio import check_output_dir, refuse_overwrite

    check_output_dir(out, "--out")
    pairs = [(path, os.path.join(out, os.path.splitext(os.path.basename(path))[0] + ".png")) for path in images]
    refuse_overwrite([target for _, target in pairs], images, "--out")
    first: Dict[str, str] = {}
    for path, target in pairs:
        if target in first:
            raise DDRNetError("{}: --out would get this file from two inputs, {} and {}; predict them "
                              "into separate folders".format(target, first[target], path))
        first[target] = path
    return pairs


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ddrnet.runtime.cliargs import check_runtime_options
    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.imageio import read_image, write_image

    check_runtime_options(args)
    pairs = plan_outputs(list_images(args.input), args.out)
    predictor = _open_predictor(args)
    written, skipped = 0, []
    for path, target in tqdm(pairs, desc="predict", disable=len(pairs) < 2):
        try:
            bgr = read_image(path)
            mask = predictor(bgr)
        except DDRNetError as err:
            if args.on_error == "stop" and len(pairs) > 1:
                raise DDRNetError("{}; stopped: {} of {} images written to {} (--on-error skip goes on "
                                  "past unreadable images)".format(err, written, len(pairs), args.out)) from None
            if args.on_error == "stop":
                raise
            log.warning("skipped %s", err)
            skipped.append(path)
            continue
        write_image(target, _render(predictor, bgr, mask, args.format))
        written += 1
    if not written:
        raise DDRNetError("{}: none of the {} image(s) could be read; nothing written".format(args.input, len(pairs)))
    print("{} image(s) -> {}{}".format(written, args.out, ", {} unreadable skipped (first: {})".format(
        len(skipped), skipped[0]) if skipped else ""))
    return 0


def _open_predictor(args: argparse.Namespace):
    from ddrnet.runtime.augment import augmented_predictor, mode_from_args
    from ddrnet.runtime.errors import DDRNetError

    if args.custom_color is not None:
        raise DDRNetError("--custom_color: not supported; --format color uses the model's palette (deploy.yaml)")
    cfg = {}
    if args.config:
        from ddrnet.train.config import load_config

        cfg = load_config(args.config)
    mode = mode_from_args(args, cfg.get("test_config"))
    if args.model:
        from ddrnet.runtime.cliargs import open_predictor

        predictor = open_predictor(args, args.model)
    else:
        from ddrnet.train.predict import checkpoint_predictor

        predictor = checkpoint_predictor(args.weights, args.model_name or (cfg.get("model") or {}).get("name"))
    classes = predictor.manifest.get("label_set", "cityscapes")
    if args.format == "labelids" and classes != "cityscapes":
        raise DDRNetError("--format labelids: Cityscapes label ids exist for its 19 classes; this model predicts the "
                          "{} label set (use --format trainids)".format(classes))
    return predictor if mode.plain else augmented_predictor(predictor, mode)


def _render(predictor, bgr, mask, fmt: str):
    if fmt == "color":
        return predictor.colorize(mask)
    if fmt == "overlay":
        return predictor.overlay(bgr, mask)
    if fmt == "labelids":
        from ddrnet.runtime.labels import TRAIN_ID_TO_ID

        return TRAIN_ID_TO_ID[mask]
    return mask
