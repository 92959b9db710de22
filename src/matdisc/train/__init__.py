"""Training loop shared by every model: seeding, devices, checkpoints, resume, early stopping."""
