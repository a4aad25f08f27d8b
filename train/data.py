"""Training and evaluation data: the Cityscapes dataset, PaddleSeg's augmentations, the loader.

The transforms reproduce PaddleSeg's (same names, options and defaults, so a PaddleSeg YAML
`transforms:` list reads the same) in numpy/OpenCV. Their randomness comes from a numpy Generator
per sample, keyed by (seed, epoch, index): a run is reproducible with its seed whatever the number
of loader workers or GPUs, and every epoch sees new augmentations.
"""
from __future__ import annotations

import signal
import threading
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import paddle

from ddrnet.runtime.cityscapes import list_samples, load_train_ids
from ddrnet.runtime.errors import DDRNetError
from ddrnet.runtime.imageio import read_image
from ddrnet.runtime.labels import DEFAULT_LABEL_SET, IGNORE_INDEX, label_set
from ddrnet.train import compat

Image = np.ndarray            # HxWx3 float32, RGB after Compose's conversion
Label = Optional[np.ndarray]  # HxW uint8 trainIds, or None when only an image is transformed


class ResizeStepScaling:
    """Scale image and label by a factor drawn from min..max in steps (0 step: continuous)."""

    random = True

    def __init__(self, min_scale_factor: float = 0.75, max_scale_factor: float = 1.25,
                 scale_step_size: float = 0.25):
        if min_scale_factor > max_scale_factor:
            raise DDRNetError("ResizeStepScaling: min_scale_factor {} > max_scale_factor {}".format(
                min_scale_factor, max_scale_factor))
        self.min_scale_factor = min_scale_factor
        self.max_scale_factor = max_scale_factor
        self.scale_step_size = scale_step_size

    def scale(self, rng: np.random.Generator) -> float:
        if self.min_scale_factor == self.max_scale_factor:
            return self.min_scale_factor
        if self.scale_step_size == 0:
            return float(rng.uniform(self.min_scale_factor, self.max_scale_factor))
        steps = int((self.max_scale_factor - self.min_scale_factor) / self.scale_step_size + 1)
        return float(rng.choice(np.linspace(self.min_scale_factor, self.max_scale_factor, steps)))

    def __call__(self, im: Image, label: Label, rng: np.random.Generator) -> Tuple[Image, Label]:
        factor = self.scale(rng)
        size = (int(round(factor * im.shape[1])), int(round(factor * im.shape[0])))
        im = cv2.resize(im, size, interpolation=cv2.INTER_LINEAR)
        if label is not None:
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        return im, label


class RandomPaddingCrop:
    """Crop crop_size = (width, height) at a random place, padding bottom/right first if smaller."""

    random = True

    def __init__(self, crop_size: Sequence[int] = (512, 512),
                 im_padding_value: Sequence[float] = (127.5, 127.5, 127.5),
                 label_padding_value: int = IGNORE_INDEX):
        if not isinstance(crop_size, (list, tuple)) or len(crop_size) != 2:
            raise DDRNetError("RandomPaddingCrop: crop_size must be [width, height], got {!r}".format(crop_size))
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.im_padding_value = tuple(float(v) for v in im_padding_value)
        self.label_padding_value = label_padding_value

    def __call__(self, im: Image, label: Label, rng: np.random.Generator) -> Tuple[Image, Label]:
        crop_w, crop_h = self.crop_size
        h, w = im.shape[:2]
        if (h, w) == (crop_h, crop_w):
            return im, label
        pad_h, pad_w = max(crop_h - h, 0), max(crop_w - w, 0)
        if pad_h or pad_w:
            im = cv2.copyMakeBorder(im, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.im_padding_value)
            if label is not None:
                label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                           value=self.label_padding_value)
            h, w = im.shape[:2]
        top = int(rng.integers(h - crop_h + 1))
        left = int(rng.integers(w - crop_w + 1))
        im = im[top:top + crop_h, left:left + crop_w]
        if label is not None:
            label = label[top:top + crop_h, left:left + crop_w]
        return im, label


class RandomHorizontalFlip:
    random = True

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, im: Image, label: Label, rng: np.random.Generator) -> Tuple[Image, Label]:
        if rng.random() < self.prob:
            im = im[:, ::-1]
            label = None if label is None else label[:, ::-1]
        return im, label


def _luma(im: np.ndarray) -> np.ndarray:
    # PIL's "L" conversion, which PaddleSeg's ImageEnhance calls blend against
    return im[..., 0] * 0.299 + im[..., 1] * 0.587 + im[..., 2] * 0.114


class RandomDistort:
    """PaddleSeg's photometric distortion: brightness, contrast, saturation and hue, each applied
    with its probability, in a random order, each result clipped to 0..255 as PIL does."""

    random = True

    def __init__(self, brightness_range: float = 0.5, brightness_prob: float = 0.5,
                 contrast_range: float = 0.5, contrast_prob: float = 0.5,
                 saturation_range: float = 0.5, saturation_prob: float = 0.5,
                 hue_range: float = 18, hue_prob: float = 0.5):
        self.ranges = {"brightness": brightness_range, "contrast": contrast_range,
                       "saturation": saturation_range, "hue": hue_range}
        self.probs = {"brightness": brightness_prob, "contrast": contrast_prob,
                      "saturation": saturation_prob, "hue": hue_prob}

    @staticmethod
    def _blend(im: np.ndarray, degenerate, factor: float) -> np.ndarray:
        return np.clip(degenerate + (im - degenerate) * factor, 0, 255)

    def _apply(self, op: str, im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        spread = self.ranges[op]
        if op == "hue":
            # PIL's hue runs 0..255 over the circle, OpenCV's float HSV 0..360 degrees
            delta = rng.uniform(-spread, spread) * 360.0 / 255.0
            hsv = cv2.cvtColor(im, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = np.mod(hsv[..., 0] + delta, 360.0)
            return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 255)
        factor = rng.uniform(1 - spread, 1 + spread)
        if op == "brightness":
            return self._blend(im, 0.0, factor)
        if op == "contrast":
            return self._blend(im, np.float32(int(_luma(im).mean() + 0.5)), factor)
        return self._blend(im, _luma(im)[..., None], factor)  # saturation

    def __call__(self, im: Image, label: Label, rng: np.random.Generator) -> Tuple[Image, Label]:
        im = np.floor(np.clip(im, 0, 255)).astype(np.float32)  # PaddleSeg goes through uint8 here
        for op in rng.permutation(list(self.ranges)):
            if rng.random() < self.probs[op]:
                im = self._apply(str(op), im, rng).astype(np.float32)
        return im, label


class Normalize:
    """(pixel / 255 - mean) / std, per channel."""

    random = False

    def __init__(self, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)):
        if len(mean) != 3 or len(std) != 3 or 0 in std:
            raise DDRNetError("Normalize: mean and std need 3 values each, std non-zero; got {} {}".format(
                mean, std))
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, im: Image, label: Label, rng: np.random.Generator) -> Tuple[Image, Label]:
        return (im.astype(np.float32) / 255.0 - self.mean) / self.std, label


Transform = Union[ResizeStepScaling, RandomPaddingCrop, RandomHorizontalFlip, RandomDistort, Normalize]
TRANSFORMS = {cls.__name__: cls for cls in
              (ResizeStepScaling, RandomPaddingCrop, RandomHorizontalFlip, RandomDistort, Normalize)}


class Compose:
    """BGR uint8 image (+ uint8 label) -> CHW float32 RGB (+ label) through the transforms in order."""

    def __init__(self, transforms: List[Transform], to_rgb: bool = True):
        self.transforms = list(transforms)
        self.to_rgb = to_rgb

    def __call__(self, bgr: np.ndarray, label: Label = None, rng: Optional[np.random.Generator] = None
                 ) -> Tuple[np.ndarray, Label]:
        rng = np.random.default_rng() if rng is None else rng
        im = bgr.astype(np.float32)
        if self.to_rgb:
            im = cv2.cvtColor(im, cv2.COLOR_BGR2RGB)
        for transform in self.transforms:
            im, label = transform(im, label, rng)
        im = np.ascontiguousarray(im.transpose(2, 0, 1), dtype=np.float32)
        return im, (None if label is None else np.ascontiguousarray(label))


def build_transforms(cfg_list: Optional[List[dict]], train: bool) -> Compose:
    """A Compose from PaddleSeg-style entries: [{type: ResizeStepScaling, min_scale_factor: 0.5}, ...].

    Evaluation (train=False) must be deterministic and keep the full resolution, so random
    transforms are refused there.
    """
    transforms = []
    for entry in cfg_list or [{"type": "Normalize"}]:
        options = dict(entry)
        name = options.pop("type", None)
        if name not in TRANSFORMS:
            raise DDRNetError("transforms: unknown type {!r} (known: {})".format(name, ", ".join(TRANSFORMS)))
        cls = TRANSFORMS[name]
        if cls.random and not train:
            raise DDRNetError("transforms: {} is random; evaluation transforms must be deterministic".format(name))
        try:
            transforms.append(cls(**options))
        except TypeError as err:
            raise DDRNetError("transforms: {}: {}".format(name, err)) from None
    return Compose(transforms)


class CityscapesDataset(paddle.io.Dataset):
    """(image float32 CHW RGB normalised, label int64 HW trainIds) from the official layout.

    Items are indexed by `i` or by a sampler's `(i, seed, draw)`, which seeds the augmentation;
    `draw` is whatever counter makes each draw new (the epoch here, the iteration in the trainer).
    """

    def __init__(self, root: str, split: str, transforms: Optional[Compose] = None,
                 labels: str = DEFAULT_LABEL_SET):
        super().__init__()
        self.root, self.split = root, split
        self.lookup = label_set(labels).from_label_ids  # labelIds -> the classes trained (e.g. 7 categories)
        self.samples = list_samples(root, split)
        self.transforms = transforms or build_transforms(None, train=False)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: Union[int, Tuple[int, int, int]]) -> Tuple[np.ndarray, np.ndarray]:
        index, seed, draw = (int(item), 0, 0) if np.isscalar(item) else item
        image_path, label_path = self.samples[index]
        bgr = read_image(image_path)
        label = load_train_ids(label_path, bgr.shape[:2], image_path, self.lookup)
        rng = np.random.default_rng([seed, draw, index])
        im, label = self.transforms(bgr, label, rng)
        return im, label.astype(np.int64)


class ResumableBatchSampler(paddle.io.BatchSampler):
    """This rank's batches for iterations [start, total): each epoch's permutation comes from the seed,
    and each item is keyed (index, seed, iteration) so CityscapesDataset seeds its augmentation with it.
    Data order and augmentation are therefore a pure function of (seed, iteration): the same with 0 or
    N loader workers, new every epoch, and a run resumed at iteration k sees exactly the batches the
    uninterrupted run saw. Works for one process and under `paddle.distributed.launch` (sharded by rank)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, start: int = 0,
                 total: Optional[int] = None, shuffle: bool = True):
        self.rank, self.world = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.per_epoch = max(1, num_samples // (batch_size * self.world))
        self.start, self.total = start, self.per_epoch if total is None else total

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[List[Tuple[int, int, int]]]:
        for it in range(self.start, self.total):
            epoch, step = divmod(it, self.per_epoch)
            order = (np.random.RandomState(self.seed + epoch).permutation(self.num_samples) if self.shuffle
                     else np.arange(self.num_samples))
            first = (step * self.world + self.rank) * self.batch_size
            yield [(int(i), self.seed, it) for i in order[first:first + self.batch_size]]


def build_loader(dataset: paddle.io.Dataset, batch_size: int, seed: int = 0, start: int = 0,
                 total: Optional[int] = None, num_workers: int = 0, shuffle: bool = True) -> paddle.io.DataLoader:
    """Loader over iterations [start, total) (default: one epoch). Loader workers need no set-up: the
    sample keys seed the augmentation (and cv2.setNumThreads in a forked worker deadlocks once the
    parent has used OpenCV's thread pool)."""
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, start, total, shuffle)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, return_list=True,
                                use_shared_memory=False)


def batches(loader: paddle.io.DataLoader) -> Iterator:
    """Iterate a DataLoader so that a sample that cannot be loaded (bad label ids, corrupt image) stops
    the run with its own one-line DDRNetError. Paddle raises the dataset's error in its reader thread,
    whose default hook prints a traceback, and the loop only sees "SystemError: Blocking queue is
    killed" (or, with num_workers=0, waits forever: Paddle 2.6 does not kill the queue there)."""
    failures = []  # type: List[BaseException]
    readers = []  # the DataLoader iterator once it exists; its thread may fail before that
    previous = threading.excepthook

    def on_thread_error(hook_args) -> None:
        if isinstance(hook_args.exc_value, DDRNetError):
            failures.append(hook_args.exc_value)
        else:
            previous(hook_args)
        for reader in readers:
            compat.wake_loader(reader)  # the loop then raises SystemError

    iterator = None
    sigchld_before = signal.getsignal(signal.SIGCHLD)
    threading.excepthook = on_thread_error
    try:
        iterator = iter(loader)
        readers.append(iterator)
        if failures:
            compat.wake_loader(iterator)
        yield from iterator
    except SystemError:
        thread = compat.loader_thread(iterator)
        if thread is not None:  # with workers the queue dies before the thread's hook has run
            thread.join(timeout=10)
        if not failures:
            raise
        raise DDRNetError(_dataset_message(failures[0])) from None
    finally:
        threading.excepthook = previous
        if iterator is not None:  # now: left to __del__ at exit, stopping the workers deadlocks
            compat.shutdown_loader(iterator, sigchld_before)


def _dataset_message(err: BaseException) -> str:
    """The dataset's own message; loader workers wrap it as "DataLoader worker(i) caught ...: <traceback>"."""
    last = str(err).strip().splitlines()[-1]
    prefix = "{}.{}: ".format(type(err).__module__, type(err).__name__)
    return last[len(prefix):] if last.startswith(prefix) else last
