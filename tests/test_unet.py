"""UNet: shapes, gradients, segmentation mapping, class weights, loss, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matdisc.models.losses import IGNORE_INDEX, class_weights, unet_loss
from matdisc.models.unet import LOG_FLOOR, UNet3D
from matdisc.train import load_model, save_model


def tiny_unet(**kwargs) -> UNet3D:
    torch.manual_seed(0)
    args = dict(classes=[8, 11, 17], base_channels=2, depth=2, density_scale=2.0)
    args.update(kwargs)
    return UNet3D(**args)


@pytest.mark.parametrize(
    ("channels_last", "log_input"), [(False, False), (True, False), (False, True)]
)
def test_shapes_and_gradients(channels_last, log_input):
    model = tiny_unet(channels_last=channels_last, log_input=log_input)
    density = torch.rand(2, 1, 16, 16, 16)
    logits, mask = model(density)
    assert logits.shape == (2, 4, 16, 16, 16)
    assert mask.shape == (2, 16, 16, 16)
    target = torch.randint(0, 4, (2, 16, 16, 16))
    weights = torch.tensor([0.0, 1.0, 1.0, 1.0])
    loss, parts = unet_loss(logits, mask, target, (target > 0).float(), weights)
    loss.backward()
    assert set(parts) == {"ce", "bce"}
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    features = model.features(density)
    assert [f.shape[1:] for f in features] == [
        (2, 16, 16, 16),
        (4, 8, 8, 8),
        (8, 4, 4, 4),
    ]


def test_log_input_channel_is_the_log_of_the_scaled_density_floored():
    model = tiny_unet(log_input=True)  # density_scale 2.0
    density = torch.zeros(1, 1, 16, 16, 16)
    density[0, 0, 3, 4, 5] = 4.0
    density[0, 0, 0, 0, 0] = -1.0  # decoded maps can dip below zero: floored, not NaN
    x = model._prepare(density)
    assert x.shape == (1, 2, 16, 16, 16)
    assert x[0, 0, 3, 4, 5] == 2.0
    assert torch.isclose(x[0, 1, 3, 4, 5], torch.log(torch.tensor(2.0 + LOG_FLOOR)))
    assert torch.isclose(x[0, 1, 0, 0, 0], torch.log(torch.tensor(LOG_FLOOR)))
    assert torch.isfinite(x).all()
    assert model.inc[0].in_channels == 2 and tiny_unet().inc[0].in_channels == 1


def test_4d_input_and_bad_grid():
    model = tiny_unet()
    logits, _ = model(torch.rand(1, 16, 16, 16))
    assert logits.shape == (1, 4, 16, 16, 16)
    with pytest.raises(Exception, match="divisible by 4"):
        model(torch.rand(1, 1, 18, 18, 18))


def test_segment_maps_classes_to_atomic_numbers_and_mask_gates():
    model = tiny_unet().eval()
    logits = torch.full((1, 4, 2, 2, 2), -5.0)
    logits[0, 2] = 5.0  # class 2 = Na everywhere ...
    logits[0, 0] = 10.0  # ... though background scores higher: it is ignored
    mask = torch.tensor([1.0, -1.0]).repeat(4).view(1, 2, 2, 2)
    classes = UNet3D.classes_from_logits(logits, mask)
    numbers = model.atomic_numbers[classes]
    assert set(numbers[mask > 0].tolist()) == {11}
    assert set(numbers[mask <= 0].tolist()) == {0}
    seg = model.segment(torch.rand(2, 16, 16, 16))
    assert seg.shape == (2, 16, 16, 16) and seg.dtype == torch.long
    assert set(seg.unique().tolist()) <= {0, 8, 11, 17}


def test_class_weights_inverse_to_counts_background_zero():
    w = class_weights([1000, 10, 40, 0])
    assert w[0] == 0 and w[3] == 0
    assert w[1] / w[2] == pytest.approx(4.0)
    assert w[1:3].mean() == pytest.approx(1.0)


def test_class_weight_power_tempers_the_inverse_counts():
    counts = [1000, 10, 40, 0]
    assert class_weights(counts, 1.0) == pytest.approx(class_weights(counts))
    half = class_weights(counts, 0.5)
    assert half[0] == 0 and half[3] == 0
    assert half[1] / half[2] == pytest.approx(2.0)  # sqrt(40 / 10)
    assert class_weights(counts, 0.0)[1:3] == pytest.approx([1.0, 1.0])


def test_loss_ignores_unknown_elements_and_all_background_batch():
    logits = torch.randn(1, 4, 4, 4, 4, requires_grad=True)
    mask = torch.randn(1, 4, 4, 4)
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    weights = torch.tensor([0.0, 1.0, 1.0, 1.0])
    loss, parts = unet_loss(logits, mask, target, torch.zeros_like(mask), weights)
    assert torch.isfinite(loss) and parts["ce"] == 0.0
    target[0, 0, 0, 0] = IGNORE_INDEX
    target[0, 1, 0, 0] = 2
    loss, parts = unet_loss(logits, mask, target, (target != 0).float(), weights)
    expected = torch.nn.functional.cross_entropy(logits[:, :, 1, 0, 0], torch.tensor([2]))
    assert parts["ce"] == pytest.approx(float(expected.detach()), rel=1e-5)


@pytest.mark.parametrize("log_input", [False, True])
def test_checkpoint_written_on_cpu_loads_with_device_auto(tmp_path, log_input):
    model = tiny_unet(log_input=log_input).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    path = save_model(tmp_path / "unet.pt", model, extra={"classes": model.classes})
    loaded, extra = load_model(path, device="auto")
    assert isinstance(loaded, UNet3D) and extra["classes"] == [8, 11, 17]
    assert loaded.log_input is log_input
    assert not loaded.training
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(loaded.parameters()).device.type == expected_device
    with torch.no_grad():
        a = model(x)[0]
        b = loaded(x.to(next(loaded.parameters()).device))[0].cpu()
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_training_loss_equals_full_loss_with_zero_background_weight():
    model = tiny_unet()
    torch.manual_seed(5)
    density = torch.rand(2, 1, 16, 16, 16)
    target = torch.randint(0, 4, (2, 16, 16, 16))
    target[target == 3] = 0
    target[0, 0, 0, :3] = IGNORE_INDEX
    mask = (target != 0).float()
    weights = torch.tensor([0.0, 0.7, 1.3, 1.0])
    from matdisc.models.losses import unet_training_loss

    extra = {"pos_weight": 5.0, "dice_weight": 1.0}
    fast, _parts_fast = unet_training_loss(model, density, target, mask, weights, **extra)
    full, _parts_full = unet_loss(*model(density), target, mask, weights, **extra)
    assert float(fast.detach()) == pytest.approx(float(full.detach()), rel=1e-5)
    fast.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full.backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_mask_loss_defaults_to_plain_bce_and_weights_atom_voxels():
    from matdisc.models.losses import mask_loss

    torch.manual_seed(1)
    logits = torch.randn(2, 8, 8, 8)
    target = (torch.rand(2, 8, 8, 8) < 0.1).float()
    plain, parts = mask_loss(logits, target)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert float(plain) == pytest.approx(float(bce), rel=1e-6) and set(parts) == {"bce"}
    # pos_weight w multiplies the atom voxels' terms only: loss = (w·pos + neg) / N
    per_voxel = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, target, reduction="none"
    )
    pos, neg = per_voxel[target > 0].sum(), per_voxel[target == 0].sum()
    weighted, _ = mask_loss(logits, target, pos_weight=4.0)
    assert float(weighted) == pytest.approx(float((4 * pos + neg) / target.numel()), rel=1e-5)


def test_dice_term_rewards_overlap():
    from matdisc.models.losses import mask_loss, soft_dice_loss

    target = torch.zeros(1, 8, 8, 8)
    target[0, 2:4, 2:4, 2:4] = 1.0
    right = torch.where(target > 0, 20.0, -20.0)
    assert float(soft_dice_loss(right, target)) < 1e-3
    assert float(soft_dice_loss(-right, target)) > 0.99
    half = right.clone()
    half[0, 2] = -20.0  # half of the 8 atom voxels missed; smoothed Dice = (2·4 + 1) / (4 + 8 + 1)
    assert float(soft_dice_loss(half, target)) == pytest.approx(1 - 9 / 13, abs=1e-4)
    loss, parts = mask_loss(half, target, dice_weight=2.0)
    assert float(loss) == pytest.approx(parts["bce"] + 2.0 * parts["dice"], rel=1e-5)


def test_confusion_scores_by_hand():
    from matdisc.models.evaluate import Confusion, _pearson

    # classes 0 (background), 1, 2; -1 = an element the UNet has no class for
    true = np.array([0, 0, 1, 1, 2, 2, -1])
    pred = np.array([0, 1, 1, 2, 2, 0, 1])
    c = Confusion(3)
    c.add(true, pred)
    assert c.matrix.tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 1]] and c.unknown_voxels == 1
    # atom voxels: true {2,3,4,5} + unknown 6; predicted {1,2,3,4,6}; both {2,3,4}
    assert c.mask_iou() == pytest.approx(3 / 6)
    assert c.nonzero_recall() == pytest.approx(2 / 5)  # voxels 2 and 4 of 4 known + 1 unknown
    # per element (class 1 = O, 2 = Na): O 1 of 2 right, 1 read as Na; Na 1 of 2, 1 missed
    more = Confusion(3)
    more.add(np.array([1, 1, 1, 2, 2]), np.array([1, 2, 2, 2, 0]))
    assert more.by_element([8, 11]) == [("O", 3, 1 / 3, 0.0, "Na"), ("Na", 2, 0.5, 0.5, "-")]
    a = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    r = _pearson(a, torch.stack([2 * a[0] + 1, -a[1]]))
    assert r == pytest.approx([1.0, -1.0])
