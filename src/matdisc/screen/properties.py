"""The eight CGCNN target properties: scale, transfer learning, and the seed's Table 1."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matdisc.io.schemas import PROPERTY_COLUMNS


@dataclass(frozen=True)
class PropertySpec:
    """How one property is learned and reported.

    log10: learned (and its MAE reported) as log10 of the value, as in the seed for
    K, G and ε. transfer: fine-tuned from the formation-energy model's embedding and
    convolution. non_negative: predictions are clipped at zero (a band gap cannot be
    negative). paper_*: Court et al. 2020, Table 1.
    """

    name: str
    label: str
    log10: bool
    transfer: bool
    non_negative: bool
    paper_mae: float
    paper_smape_percent: float
    paper_n_train: int
    paper_n_test: int

    @property
    def scale(self) -> str:
        return "log10" if self.log10 else "linear"

    def valid(self, values: np.ndarray) -> np.ndarray:
        """Labels that can be learned: finite, and positive on a log scale."""
        ok = np.isfinite(values)
        if self.log10:
            ok &= values > 0
        return ok

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Column units -> learning scale."""
        return np.log10(values) if self.log10 else np.asarray(values, dtype=np.float64)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Learning scale -> column units (band gap clipped at 0)."""
        out = 10.0**values if self.log10 else np.asarray(values, dtype=np.float64)
        return np.maximum(out, 0.0) if self.non_negative else out


SPECS: dict[str, PropertySpec] = {
    s.name: s
    for s in (
        PropertySpec("e_form_ev_per_atom", "formation energy (eV/atom)", False, False, False,
                     0.102, 27.70, 35734, 6700),
        PropertySpec("energy_ev_per_atom", "energy per atom (eV/atom)", False, False, False,
                     0.114, 2.51, 35734, 6700),
        PropertySpec("band_gap_ev", "band gap (eV)", False, True, True,
                     0.299, 137.73, 35734, 6700),
        PropertySpec("k_vrh_gpa", "bulk modulus (log10 GPa)", True, True, False,
                     0.186, 5.23, 8724, 1635),
        PropertySpec("g_vrh_gpa", "shear modulus (log10 GPa)", True, True, False,
                     0.306, 10.72, 8192, 1536),
        PropertySpec("poisson_ratio", "Poisson ratio", False, True, False,
                     0.051, 16.72, 8448, 1585),
        PropertySpec("refractive_index", "refractive index", False, True, False,
                     0.155, 5.34, 3744, 702),
        PropertySpec("dielectric_total", "dielectric constant (log10)", True, True, False,
                     0.115, 6.49, 3744, 702),
    )
}  # fmt: skip

#: The model whose feature extractor the others are fine-tuned from.
TRANSFER_SOURCE = "e_form_ev_per_atom"

assert tuple(SPECS) == PROPERTY_COLUMNS, "SPECS must follow PROPERTY_COLUMNS"


def mae(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - true))) if len(true) else float("nan")


def smape_percent(pred: np.ndarray, true: np.ndarray) -> float:
    """Symmetric mean absolute percentage error, 100/n Σ |p - t| / ((|p| + |t|) / 2).

    Pairs with p = t = 0 count as zero error.
    """
    if not len(true):
        return float("nan")
    denom = (np.abs(pred) + np.abs(true)) / 2.0
    ratio = np.divide(np.abs(pred - true), denom, out=np.zeros_like(denom), where=denom > 0)
    return float(100.0 * np.mean(ratio))
