"""The results report: figures and tables for ``snakemake --report`` (rule ``plot_report``)."""
