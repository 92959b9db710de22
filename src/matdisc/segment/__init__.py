"""Voxel grids back to crystals: segmentation, watershed, centroids, lattice fit."""
