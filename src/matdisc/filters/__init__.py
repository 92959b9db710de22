"""The five-stage candidate filter and the funnel counts (seed 000, Table 2)."""
