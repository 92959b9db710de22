"""Latent draws of the three sampling modes (seed 000, "Generation of New Crystal Structures").

* targeted: ``z ~ N(μ_base, σ² I)`` around the encoded base compound, every draw
  conditioned on the base's formation-energy decile. ``variance`` is σ² (the seed's 0.5),
  not σ.
* random: ``z ~ N(0, I)``, the same number of draws for every decile (the seed's
  100 per decile of 1000).
* interpolate: ``n`` evenly spaced points ``z = (1 - t) μ_start + t μ_end``,
  ``t`` in [0, 1], the condition blended the same way between the two one-hot deciles.

Draws come from a numpy Generator seeded with ``(seed, base)``, all at once, so the
result does not depend on the decoding batch size or the device.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

N_DECILES = 10


@dataclass(frozen=True)
class Draws:
    """z: (N, latent_dim) float32; condition: (N, n_deciles) float32 (one-hot or blended);
    decile: (N,) int the condition's decile (argmax); t: (N,) float interpolation
    fraction (NaN outside interpolation); z_distance: (N,) |z - μ| (|z| for random)."""

    z: np.ndarray
    condition: np.ndarray
    decile: np.ndarray
    t: np.ndarray
    z_distance: np.ndarray


def rng_for(seed: int, base: str) -> np.random.Generator:
    """A Generator that depends on the master seed and the base compound only."""
    return np.random.default_rng([int(seed), zlib.crc32(base.encode("utf-8"))])


def onehot(deciles: np.ndarray, n: int = N_DECILES) -> np.ndarray:
    deciles = np.asarray(deciles, dtype=np.int64)
    out = np.zeros((len(deciles), n), dtype=np.float32)
    out[np.arange(len(deciles)), deciles] = 1.0
    return out


def targeted(
    mu: np.ndarray, decile: int, n: int, variance: float, rng: np.random.Generator
) -> Draws:
    """``n`` draws from N(μ, variance·I) conditioned on ``decile``; mu: (latent_dim,)."""
    mu = np.asarray(mu, dtype=np.float64).reshape(-1)
    eps = rng.standard_normal((n, mu.size))
    z = mu + np.sqrt(variance) * eps
    deciles = np.full(n, int(decile), dtype=np.int64)
    return Draws(
        z=z.astype(np.float32),
        condition=onehot(deciles),
        decile=deciles,
        t=np.full(n, np.nan),
        z_distance=np.linalg.norm(z - mu, axis=1),
    )


def random(latent_dim: int, n: int, rng: np.random.Generator, n_deciles: int = N_DECILES) -> Draws:
    """``n`` draws from N(0, I), ``n / n_deciles`` per decile (decile 0 first)."""
    if n % n_deciles:
        raise ValueError(f"random sampling needs a multiple of {n_deciles} draws, got {n}")
    z = rng.standard_normal((n, latent_dim))
    deciles = np.repeat(np.arange(n_deciles), n // n_deciles)
    return Draws(
        z=z.astype(np.float32),
        condition=onehot(deciles, n_deciles),
        decile=deciles,
        t=np.full(n, np.nan),
        z_distance=np.linalg.norm(z, axis=1),
    )


def interpolate(
    mu_start: np.ndarray, mu_end: np.ndarray, decile_start: int, decile_end: int, n: int
) -> Draws:
    """``n`` points on the segment from μ_start (t = 0) to μ_end (t = 1)."""
    mu_start = np.asarray(mu_start, dtype=np.float64).reshape(1, -1)
    mu_end = np.asarray(mu_end, dtype=np.float64).reshape(1, -1)
    t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)
    z = (1 - t[:, None]) * mu_start + t[:, None] * mu_end
    a = onehot(np.array([decile_start]))[0]
    b = onehot(np.array([decile_end]))[0]
    condition = ((1 - t[:, None]) * a + t[:, None] * b).astype(np.float32)
    return Draws(
        z=z.astype(np.float32),
        condition=condition,
        decile=condition.argmax(axis=1),
        t=t,
        z_distance=np.linalg.norm(z - mu_start, axis=1),
    )
