"""Evaluate a Paddle model on a Cityscapes-layout split at full resolution (official rules)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import paddle
import paddle.distributed as dist
from tqdm import tqdm

from ddrnet.runtime.augment import EvalMode
from ddrnet.runtime.metrics import ConfusionMatrix


def evaluate(model: paddle.nn.Layer, dataset, progress: bool = True, mode: Optional[EvalMode] = None) -> dict:
    """mIoU / per-class IoU / pixel accuracy. The model returns logits at input size, images are
    never resized, so predictions are compared with labels at full label resolution. Under
    `paddle.distributed.launch` each rank takes a shard and the confusion matrices are summed.
    `mode`: PaddleSeg's multi-scale / flip / sliding-window evaluation over the model's logits."""
    rank, world = dist.get_rank(), dist.get_world_size()
    cm = ConfusionMatrix(num_classes=getattr(model, "num_classes", 19))
    model.eval()
    indices = range(rank, len(dataset), world)
    with paddle.no_grad():
        for i in tqdm(indices, desc="eval", disable=not progress or rank != 0, leave=False):
            image, label = dataset[i]
            if mode is None or mode.plain:
                pred = paddle.argmax(model(paddle.to_tensor(image[None])), axis=1)[0].numpy().astype(np.uint8)
            else:
                pred = mode.logits(lambda x: model(paddle.to_tensor(x)).numpy(), image[None])[0].argmax(axis=0)
            cm.update(pred, np.asarray(label), source=dataset.samples[i][0])
    if world > 1:
        matrix = paddle.to_tensor(cm.matrix)
        dist.all_reduce(matrix)
        cm.matrix = matrix.numpy()
        count = paddle.to_tensor([cm.num_images])
        dist.all_reduce(count)
        cm.num_images = int(count.numpy()[0])
    return cm.result()
