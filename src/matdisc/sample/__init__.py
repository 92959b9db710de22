"""Latent sampling around base compounds, random and interpolated."""
