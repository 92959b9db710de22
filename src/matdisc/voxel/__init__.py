"""Crystal <-> voxel grid mapping (seed 000, Methods: Data Preparation and Formatting)."""
