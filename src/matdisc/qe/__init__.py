"""Quantum ESPRESSO vc-relax input generation and runs."""
