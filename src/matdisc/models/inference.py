"""Fast inference of the trained models on CPU (and GPU): sampling and evaluation share it.

* :func:`fold_batchnorm`: every Conv3d -> BatchNorm3d pair folded into one convolution
  (same outputs to float rounding, ~15 % faster UNet on CPU);
* :func:`inference_copy`: that, in the channels-last 3-D layout (faster in fp32 on CPU
  whatever layout the model was trained in: ``benchmarks/bench_training.py``), and for a
  UNet or a VAE optionally marked to run under bf16 autocast (``train.bf16``: on a CPU
  with AMX the evaluation's model passes take half the time of fp32,
  ``benchmarks/bench_evaluate.py``; the models train under the same autocast there);
  :func:`run_autocast` enters it for a VAE;
* :func:`segment_scored` / :func:`segment_masked`: the UNet's species map with the
  species head evaluated only on the voxels the mask head marks (the same map as
  ``UNet3D.segment``, about 40 % faster: the dense (B, K, d, d, d) logits are never
  built), and :func:`class_scores`: the class probabilities of those voxels per grid.
"""

from __future__ import annotations

import contextlib
import copy
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn

from matdisc.segment.invert import ClassScores
from matdisc.train.device import autocast


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every Conv3d -> BatchNorm3d pair inside an
    ``nn.Sequential`` replaced by one convolution (the BatchNorm becomes Identity)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv3d) and isinstance(module[i + 1], nn.BatchNorm3d):
                module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                module[i + 1] = nn.Identity()
    return model


@torch.inference_mode()
def segment_masked(unet: Any, density: torch.Tensor) -> torch.Tensor:
    """``UNet3D.segment`` with the species head applied to occupied voxels only.

    density: (B, [1,] d, d, d). Returns (B, d, d, d) int64 atomic numbers, 0 = empty:
    equal to ``unet.segment(density)`` (tested), without the dense class-logit tensor.
    """
    return segment_scored(unet, density)[0]


@torch.inference_mode()
def segment_scored(
    unet: Any, density: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """:func:`segment_masked`, plus the occupied voxels (``nonzero`` indices: batch, x, y,
    z) and their element-class logits (M, k; background excluded, the columns of
    ``unet.atomic_numbers[1:]``; float32). A UNet marked by :func:`inference_copy` with
    ``bf16`` runs under bf16 autocast."""
    with autocast(density.device, bool(getattr(unet, "inference_bf16", False))):
        skips = unet.features(density)
        h = skips[-1]
        for block, skip in zip(unet.up, reversed(skips[:-1]), strict=True):
            h = block(torch.cat([unet.upsample(h), skip], dim=1))
        occupied = unet.mask_head(h).squeeze(1) > 0
        where = occupied.nonzero(as_tuple=True)
        features = h.permute(0, 2, 3, 4, 1)[where]  # (M, C) of the occupied voxels
        weight = unet.species_head.weight[1:, :, 0, 0, 0]  # background class excluded
        logits = torch.addmm(unet.species_head.bias[1:], features, weight.t()).float()
    out = torch.zeros(occupied.shape, dtype=torch.long, device=density.device)
    out[where] = unet.atomic_numbers[logits.argmax(dim=1) + 1]
    return out, where, logits


def inference_copy(model: nn.Module, *, bf16: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` for inference: BatchNorm folded
    (:func:`fold_batchnorm`), channels-last 3-D layout; ``bf16``: the copy runs under bf16
    autocast (:func:`matdisc.train.device.inference_bf16` decides where that pays): a UNet
    in :func:`segment_scored`, a VAE inside :func:`run_autocast`."""
    model = fold_batchnorm(model)
    model.channels_last = True
    model.inference_bf16 = bool(bf16)
    return model.to(memory_format=torch.channels_last_3d)


def run_autocast(model: nn.Module) -> contextlib.AbstractContextManager:
    """bf16 autocast on the model's device for a copy that :func:`inference_copy` marked
    with ``bf16``; nothing otherwise. Its outputs may then be bf16: take ``.float()``."""
    device = next(model.parameters()).device
    return autocast(device, bool(getattr(model, "inference_bf16", False)))


def class_scores(
    where: tuple[torch.Tensor, ...], logits: torch.Tensor, numbers: np.ndarray, batch: int, d: int
) -> list[ClassScores]:
    """Per grid of a batch, the probabilities of its occupied voxels (softmax of the
    element-class ``logits`` of :func:`segment_scored`; ``numbers``: the classes' atomic
    numbers)."""
    probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
    b, x, y, z = (w.cpu().numpy() for w in where)
    flat = np.ravel_multi_index((x, y, z), (d, d, d))
    order = np.argsort(b, kind="stable")
    bounds = np.searchsorted(b[order], np.arange(batch + 1))
    return [
        ClassScores(flat[order[lo:hi]], probs[order[lo:hi]], numbers) for lo, hi in pairwise(bounds)
    ]
