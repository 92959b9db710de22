"""Model checkpoints that rebuild their model with one call.

A checkpoint holds ``{"model_class": "module:QualName", "model_args": {...},
"state_dict": ..., "extra": {...}, "version": "..."}``. ``model_args`` are the keyword
arguments the model was built with (every model stores them as ``self.model_args``);
``extra`` carries what is needed to use the model on new data: decile edges, class lists
and weights, target scalers, the config it was trained with.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from matdisc import __version__
from matdisc.errors import UserError
from matdisc.io.atomic import atomic_path
from matdisc.train.device import resolve_device


def _class_path(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(path: str) -> type[nn.Module]:
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def save_model(path: Path | str, model: nn.Module, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (its class, constructor args and weights) and ``extra`` atomically."""
    model_args = getattr(model, "model_args", None)
    if model_args is None:
        raise TypeError(
            f"{type(model).__name__} does not record its model_args; set self.model_args"
        )
    payload = {
        "model_class": _class_path(model),
        "model_args": dict(model_args),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
        "version": __version__,
    }
    path = Path(path)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)
    return path


def load_model(
    path: Path | str, device: str | torch.device = "auto"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path`` on ``device`` in eval mode; return it and ``extra``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"model checkpoint {path} does not exist; run the training rule that writes it."
        )
    payload = torch.load(path, map_location="cpu", weights_only=False)
    cls = _import_class(payload["model_class"])
    model = cls(**payload["model_args"])
    model.load_state_dict(payload["state_dict"])
    model.to(resolve_device(device))
    model.eval()
    return model, payload.get("extra", {})
