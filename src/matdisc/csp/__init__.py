"""ContinuouSP: energy-based crystal structure prediction (seed 001)."""
