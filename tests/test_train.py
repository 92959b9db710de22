"""The shared training loop: resume, early stopping, checkpoints, devices."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from tiny_cases import loop_config
from torch import nn
from torch.utils.data import TensorDataset

from matdisc.errors import UserError
from matdisc.train import fit, load_model, resolve_device, save_model
from matdisc.train.device import bf16_supported, resolve_bf16
from matdisc.train.loop import lr_factor


class TinyNet(nn.Module):
    def __init__(self, *, width: int = 8) -> None:
        super().__init__()
        self.model_args = {"width": width}
        self.net = nn.Sequential(
            nn.Linear(3, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _loss(model: nn.Module, batch, device: torch.device):
    x, y = (t.to(device) for t in batch)
    pred = model(x)
    return nn.functional.mse_loss(pred, y), {"mae": (pred - y).abs().mean().item()}


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, y)


def _train(tmp: Path, epochs: int, resume: Path, **kw) -> tuple[TinyNet, object]:
    torch.manual_seed(0)
    model = TinyNet()
    cfg = loop_config(epochs=epochs, lr=1e-2, batch_size=16, seed=3, **kw)
    result = fit(
        model=model,
        loss_fn=_loss,
        train_set=_data(96, 1),
        val_set=_data(32, 2),
        config=cfg,
        resume_path=resume,
    )
    return model, result


def test_resumed_training_matches_uninterrupted(tmp_path: Path) -> None:
    full, full_result = _train(tmp_path, 6, tmp_path / "full.resume")
    _train(tmp_path, 3, tmp_path / "split.resume")  # "killed" after 3 epochs
    resumed, resumed_result = _train(tmp_path, 6, tmp_path / "split.resume")
    assert resumed_result.steps == full_result.steps == 6 * (96 // 16)
    assert resumed_result.epochs_run == 6
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [h["val_loss"] for h in full_result.history] == [
        h["val_loss"] for h in resumed_result.history
    ]


def test_cosine_schedule_decays_per_step_and_resumes(tmp_path: Path) -> None:
    kw = {"lr_schedule": "cosine", "lr_final": 0.1}
    full, full_result = _train(tmp_path, 6, tmp_path / "full.resume", **kw)
    lrs = [h["lr"] for h in full_result.history]
    assert all(a > b for a, b in itertools.pairwise(lrs))  # falls every epoch
    steps = 6 * (96 // 16)
    cfg = loop_config(epochs=6, lr=1e-2, batch_size=16, **kw)
    # after the last step the schedule has reached lr_final x lr
    assert lrs[-1] == pytest.approx(1e-2 * lr_factor(cfg, steps, steps))
    assert lr_factor(cfg, 0, steps) == 1.0
    assert lr_factor(cfg, steps - 1, steps) == pytest.approx(0.1)
    assert lr_factor(cfg, (steps - 1) / 2, steps) == pytest.approx(0.55)
    # the same 6-epoch run, killed during its 4th epoch, then resumed
    calls = {"train": 0}

    def dies_in_epoch_4(model, batch, device):
        if model.training:
            calls["train"] += 1
            if calls["train"] > 3 * (96 // 16) + 2:
                raise KeyboardInterrupt
        return _loss(model, batch, device)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(
            model=TinyNet(),
            loss_fn=dies_in_epoch_4,
            train_set=_data(96, 1),
            val_set=_data(32, 2),
            config=loop_config(epochs=6, lr=1e-2, batch_size=16, seed=3, **kw),
            resume_path=tmp_path / "split.resume",
        )
    resumed, resumed_result = _train(tmp_path, 6, tmp_path / "split.resume", **kw)
    assert [h["lr"] for h in resumed_result.history] == lrs
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # a constant schedule keeps lr
    _, const = _train(tmp_path, 2, tmp_path / "const.resume")
    assert [h["lr"] for h in const.history] == [1e-2, 1e-2]


def test_training_reduces_loss_and_keeps_best(tmp_path: Path) -> None:
    _, result = _train(tmp_path, 8, tmp_path / "r")
    losses = [h["val_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_epoch == 1 + losses.index(min(losses))


def test_early_stopping_on_diverging_validation(tmp_path: Path) -> None:
    # Validation targets have the opposite sign: the better the fit to the training data,
    # the worse the validation loss, so training must stop after `patience` bad epochs.
    train = _data(96, 1)
    x, y = train.tensors
    model = TinyNet()
    cfg = loop_config(epochs=50, lr=1e-2, batch_size=16, seed=0, patience=3)
    res = fit(
        model=model,
        loss_fn=_loss,
        train_set=train,
        val_set=TensorDataset(x, -y),
        config=cfg,
        resume_path=tmp_path / "es",
    )
    assert res.stopped_early
    assert res.epochs_run == res.best_epoch + 3 < 50


def test_a_wall_clock_cap_is_opt_in_logged_and_recorded(tmp_path: Path, caplog) -> None:
    _, plain = _train(tmp_path, 4, tmp_path / "plain")
    assert plain.epochs_run == 4 and not plain.time_capped and not plain.stopped_early
    # a cap already passed after the first epoch: one epoch, a warning, the flag
    with caplog.at_level("WARNING"):
        _, capped = _train(tmp_path, 4, tmp_path / "capped", max_minutes=1e-9)
    assert capped.epochs_run == 1 and capped.time_capped and capped.stopped_early
    assert "wall-clock cap" in caplog.text and "machine's speed" in caplog.text
    # re-run on the finished resume file: still recorded as capped
    _, again = _train(tmp_path, 4, tmp_path / "capped", max_minutes=1e-9)
    assert again.time_capped and again.epochs_run == 1


def test_schema_budgets_are_epochs_not_minutes() -> None:
    from matdisc.config import validate_config

    config = validate_config({})
    assert config["unet"]["max_minutes"] is None and config["vae"]["max_minutes"] is None


def test_checkpoint_roundtrip_auto_device(tmp_path: Path) -> None:
    model = TinyNet(width=5)
    path = save_model(tmp_path / "m.pt", model, extra={"decile_edges": [0.1, 0.2]})
    loaded, extra = load_model(path, device="auto")
    assert isinstance(loaded, TinyNet) and loaded.model_args == {"width": 5}
    assert extra == {"decile_edges": [0.1, 0.2]}
    assert next(loaded.parameters()).device == resolve_device("auto")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())


def test_missing_cuda_is_a_user_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda")


def test_bad_train_config_is_a_user_error() -> None:
    with pytest.raises(UserError, match="batch_size"):
        loop_config(epochs=1, lr=1e-3, batch_size=0)
    with pytest.raises(UserError, match="lr_schedule must be one of constant, cosine"):
        loop_config(epochs=1, lr=1e-3, batch_size=1, lr_schedule="linear")


def test_bf16_auto_follows_the_hardware() -> None:
    cpu = torch.device("cpu")
    assert resolve_bf16(True, cpu) is True and resolve_bf16(False, cpu) is False
    amx = bool(torch.backends.mkldnn.is_available() and torch.cpu._is_amx_tile_supported())
    assert bf16_supported(cpu) is amx
    assert resolve_bf16("auto", cpu) is amx
    with pytest.raises(UserError, match="auto, true or false"):
        resolve_bf16("yes", cpu)


def test_bf16_training_resumes_like_uninterrupted(tmp_path: Path) -> None:
    """bf16 autocast (forced on, whatever the CPU) trains, lowers the loss and resumes."""
    full, res_full = _train(tmp_path, 4, tmp_path / "full.resume", bf16=True)
    _train(tmp_path, 2, tmp_path / "part.resume", bf16=True)
    part, res_part = _train(tmp_path, 4, tmp_path / "part.resume", bf16=True)
    assert res_part.steps == res_full.steps
    assert res_full.history[-1]["train_loss"] < res_full.history[0]["train_loss"]
    for a, b in zip(full.state_dict().values(), part.state_dict().values(), strict=True):
        assert torch.equal(a, b)
