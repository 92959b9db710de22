"""Cond-DFC-VAE: shapes, gradients, conditioning, perceptual loss, physical units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from matdisc.models.losses import kld, perceptual_loss, vae_loss
from matdisc.models.unet import UNet3D
from matdisc.models.vae import CondVAE3D
from matdisc.train import load_model, save_model
from matdisc.voxel import coordinate_grid


def tiny_vae(**kwargs) -> CondVAE3D:
    torch.manual_seed(0)
    args = dict(grid_size=16, channels=(4, 8), latent_dim=6, density_scale=3.0, coord_scale=8.0)
    args.update(kwargs)
    return CondVAE3D(**args)


def batch(b: int = 2):
    torch.manual_seed(1)
    density = torch.rand(b, 1, 16, 16, 16) * 3
    coords = torch.as_tensor(coordinate_grid(np.array([[4.0] * 3, [5.5] * 3])[:b], 16, 0.25))
    cond = torch.eye(10)[[3, 7][:b]]
    return density, coords.float(), cond


@pytest.mark.parametrize("channels_last", [False, True])
def test_shapes_and_gradients(channels_last):
    model = tiny_vae(channels_last=channels_last).train()
    unet = UNet3D(classes=[8, 11], base_channels=2, depth=2).eval()
    for p in unet.parameters():
        p.requires_grad_(False)
    density, coords, cond = batch()
    recon, target, mu, logvar = model(density, coords, cond)
    assert recon.shape == target.shape == (2, 4, 16, 16, 16)
    assert mu.shape == logvar.shape == (2, 6)
    torch.testing.assert_close(target[:, 0], density[:, 0] / 3.0)
    torch.testing.assert_close(target[:, 1:], coords / 8.0)
    loss, parts = vae_loss(
        recon, target, mu, logvar, beta=0.1, alpha=1.0, unet=unet, density_scale=3.0
    )
    loss.backward()
    assert {"mse", "mse_density", "mse_coords", "kld", "perceptual"} <= set(parts)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in unet.parameters())


def test_encode_decode_units_and_shapes():
    model = tiny_vae().eval()
    density, coords, cond = batch()
    mu, _logvar = model.encode(density, coords, cond)
    assert mu.shape == (2, 6)
    dens, xyz = model.decode(mu, cond)
    assert dens.shape == (2, 16, 16, 16) and xyz.shape == (2, 3, 16, 16, 16)
    assert dens.min() >= 0
    recon, _, _, _ = model(density, coords, cond)  # eval: z = mu
    torch.testing.assert_close(xyz, recon[:, 1:] * 8.0)


def test_conditioning_changes_decoder_output():
    model = tiny_vae().eval()
    z = torch.randn(1, 6)
    a, ca = model.decode(z, torch.eye(10)[[0]])
    b, cb = model.decode(z, torch.eye(10)[[9]])
    assert not torch.allclose(a, b) and not torch.allclose(ca, cb)
    density, coords, _ = batch(1)
    mu_a, _ = model.encode(density, coords, torch.eye(10)[[0]])
    mu_b, _ = model.encode(density, coords, torch.eye(10)[[9]])
    assert not torch.allclose(mu_a, mu_b)


def test_condition_shape_checked():
    model = tiny_vae()
    with pytest.raises(ValueError, match="condition"):
        model.decode(torch.randn(2, 6), torch.eye(10)[:1])


def test_perceptual_loss_zero_for_identical_inputs_and_positive_otherwise():
    torch.manual_seed(0)
    unet = UNet3D(classes=[8, 11], base_channels=2, depth=2, density_scale=2.0).eval()
    unet.requires_grad_(False)
    x = torch.rand(2, 1, 16, 16, 16)
    assert float(perceptual_loss(unet, x, x.clone())) == 0.0
    assert float(perceptual_loss(unet, x, x + 0.1 * torch.rand_like(x))) > 0.0


def test_kld_zero_for_standard_normal():
    assert float(kld(torch.zeros(3, 5), torch.zeros(3, 5))) == 0.0
    assert float(kld(torch.ones(3, 5), torch.zeros(3, 5))) == pytest.approx(2.5)


def test_grid_must_divide():
    with pytest.raises(Exception, match="divisible by 8"):
        CondVAE3D(grid_size=20, channels=(4, 8, 8))


def test_checkpoint_on_cpu_loads_with_device_auto(tmp_path):
    model = tiny_vae().eval()
    path = save_model(tmp_path / "vae.pt", model, extra={"decile_edges": [0.1] * 9})
    loaded, extra = load_model(path, device="auto")
    assert isinstance(loaded, CondVAE3D) and extra["decile_edges"] == [0.1] * 9
    dev = next(loaded.parameters()).device
    z = torch.randn(1, 6)
    cond = torch.eye(10)[[4]]
    with torch.no_grad():
        a, _ = model.decode(z, cond)
        b, _ = loaded.decode(z.to(dev), cond.to(dev))
    np.testing.assert_allclose(a.numpy(), b.cpu().numpy(), rtol=1e-5, atol=1e-6)
