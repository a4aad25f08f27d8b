"""Segment images with an exported model (runtime only) or a checkpoint (Paddle).

  ddrnet predict --model export/fp32 --input street.png --out pred/ --format overlay
  ddrnet predict --weights runs/x/best_model --input leftImg8bit/val --out pred/ --format labelids

Formats: color (class colours), overlay (colours over the image), trainids (0..18, 255 ignore),
labelids (Cityscapes ids: the benchmark submission format, `<name>.png` per input image).
"""
from __future__ import annotations

import argparse

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="exported model folder (with deploy.yaml)")
    src.add_argument("--weights", help="checkpoint folder or .pdparams (needs Paddle)")
    p.add_argument("--model-name", help="architecture for bare .pdparams (e.g. ddrnet23)")
    p.add_argument("--input", required=True, help="an image or a folder (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("color", "overlay", "trainids", "labelids"), default="overlay")
    p.add_argument("--backend", default="onnxruntime", help="for --model: onnxruntime, paddle or tensorrt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)


def list_images(path: str) -> list:
    import os

    from ddrnet.runtime.errors import DDRNetError

    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DDRNetError("{}: no such file or folder".format(path))
    found = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                   if f.lower().endswith(IMAGE_EXTS))
    if not found:
        raise DDRNetError("{}: no images ({})".format(path, " ".join(IMAGE_EXTS)))
    return found


def run(args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from ddrnet.runtime.errors import DDRNetError
    from ddrnet.runtime.imageio import read_image, write_image
    from ddrnet.runtime.labels import TRAIN_ID_TO_ID

    images = list_images(args.input)
    if args.model:
        from ddrnet.runtime import Predictor

        predictor = Predictor(args.model, backend=args.backend, device=args.device, threads=args.threads)
    else:
        from ddrnet.train.predict import checkpoint_predictor

        predictor = checkpoint_predictor(args.weights, args.model_name)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        raise DDRNetError("{}: cannot create output folder ({})".format(args.out, err.strerror)) from None
    for path in tqdm(images, desc="predict", disable=len(images) < 2):
        bgr = read_image(path)
        mask = predictor(bgr)
        if args.format == "color":
            out = predictor.colorize(mask)
        elif args.format == "overlay":
            out = predictor.overlay(bgr, mask)
        elif args.format == "labelids":
            out = TRAIN_ID_TO_ID[mask]
        else:
            out = mask
        stem = os.path.splitext(os.path.basename(path))[0]
        write_image(os.path.join(args.out, stem + ".png"), out)
    print("{} image(s) -> {}".format(len(images), args.out))
    return 0
