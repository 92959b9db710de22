"""The candidate judge: composition validity, CHGNet relaxation, energy above the convex hull
of the run's own reference phases, and the S.U.N. (stable, unique, novel) rate."""
