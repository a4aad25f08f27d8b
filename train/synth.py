"""The synthetic data set: road scenes (train/scene.py) written in the official Cityscapes layout,
for the demo, tests and calibration: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` and `gtFine/...`
with `_labelIds`, `_labelTrainIds` and `_color` PNGs, plus RECIPE (the generator's arguments).

Frame i of a split depends only on (seed, split, i): `--train 10` and `--train 20` share their
first ten frames, and a re-run writes identical bytes.
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.fileio import check_output_dir, write_json
from ddrnet.runtime.imageio import write_image
from ddrnet.runtime.labels import ID_TO_TRAIN_ID, LABELS
from ddrnet.train.scene import DEFAULT_SIZE, render

TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt",
                "hamburg", "hanover", "jena", "krefeld", "monchengladbach", "strasbourg",
                "stuttgart", "tubingen", "ulm", "weimar", "zurich")
VAL_CITIES = ("frankfurt", "lindau", "munster")
CITIES = {"train": TRAIN_CITIES, "val": VAL_CITIES}
FRAME_NUMBER = 19  # Cityscapes' annotated frame in every 30-frame snippet
RECIPE = "synth.json"  # the generator's arguments, at the data root


# ---------------------------------------------------------------------------------------------
# writing the official layout

ID_COLOURS_BGR = np.zeros((256, 3), np.uint8)
for _lb in LABELS:
    if _lb.id >= 0:
        ID_COLOURS_BGR[_lb.id] = _lb.color[::-1]


def frame_stem(split: str, index: int) -> Tuple[str, str]:
    """(city, `<city>_<seq>_<frame>`) of frame `index`: cities take turns, so names are stable."""
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, "{}_{:06d}_{:06d}".format(city, index // len(cities), FRAME_NUMBER)


def _write_frame(job: Tuple[str, int, str, int, Tuple[int, int]]) -> str:
    out, seed, split, index, size = job
    bgr, ids = render(seed, split, index, size)
    city, stem = frame_stem(split, index)
    image_dir = os.path.join(out, "leftImg8bit", split, city)
    label_dir = os.path.join(out, "gtFine", split, city)
    write_image(os.path.join(image_dir, stem + "_leftImg8bit.png"), bgr)
    write_image(os.path.join(label_dir, stem + "_gtFine_labelIds.png"), ids)
    write_image(os.path.join(label_dir, stem + "_gtFine_labelTrainIds.png"), ID_TO_TRAIN_ID[ids])
    write_image(os.path.join(label_dir, stem + "_gtFine_color.png"), ID_COLOURS_BGR[ids])
    return stem


def check_out(out: str) -> None:
    """The data folder can be written and holds no other data set: the frames take real Cityscapes
    names (aachen_000000_000019_...), so writing them into a Cityscapes root would replace its files.
    A folder this generator wrote (it has RECIPE, written before the first frame) may be rewritten."""
    check_output_dir(out, "--out")
    if os.path.isdir(out) and not os.path.isfile(os.path.join(out, RECIPE)):
        found = [kind for kind in ("leftImg8bit", "gtFine") if os.path.exists(os.path.join(out, kind))]
        if found:
            raise DDRNetError("{}: holds a data set this generator did not write ({}/ but no {}); synthetic "
                              "frames take Cityscapes' file names and would replace its files: choose another "
                              "--out".format(out, found[0], RECIPE))


def generate(out: str, n_train: int, n_val: int, size: Tuple[int, int] = DEFAULT_SIZE, seed: int = 0,
             workers: int = 1) -> str:
    """Write n_train + n_val frames in the Cityscapes layout under `out`; returns `out`."""
    from tqdm import tqdm

    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise DDRNetError("--train {} --val {}: frame counts must be >= 0, at least one frame in all".format(
            n_train, n_val))
    if min(size) < 32:
        raise DDRNetError("--size {}x{}: at least 32x32".format(*size))
    counts = (("train", n_train), ("val", n_val))
    check_out(out)
    write_json({"generator": "ddrnet.train.synth", "seed": seed, "size": list(size), "train": n_train,
                "val": n_val}, os.path.join(out, RECIPE))
    jobs = [(out, seed, split, i, tuple(size)) for split, n in counts for i in range(n)]
    progress = dict(total=len(jobs), desc="synth", unit="img")
    if workers > 1:
        import multiprocessing

        # spawned, not forked: a caller that already runs threads (Paddle, OpenCV) could deadlock a fork
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(_write_frame, jobs, chunksize=4), **progress):
                pass
    else:
        for job in tqdm(jobs, **progress):
            _write_frame(job)
    return out
