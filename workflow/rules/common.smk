# Config validation, wildcard constraints and every input function of the workflow.
import sys
from pathlib import Path

from matdisc.config import sections_json, validate_config
from matdisc.errors import UserError

try:
    validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")
except UserError as exc:
    sys.exit(f"matdisc: {exc}")

BASES = list(config["base_compounds"])


# A base compound is a formula: letters and digits only, so no config value can name a
# path outside results/.
wildcard_constraints:
    base="[A-Z][A-Za-z0-9]*",


def settings(*names):
    """The config sections a stage reads, as the JSON its command line takes."""
    return sections_json(config, names)


def final_outputs(wildcards):
    """Everything `rule all` builds: the last output of every stage for every base."""
    outputs = [
        "results/data/structures.parquet",
        "results/data/base_compounds.parquet",
        "results/voxels/cubic.zarr",
        "results/metrics/unet.parquet",
        "results/metrics/vae.parquet",
        "results/metrics/cgcnn.parquet",
        *expand("results/samples/{base}.parquet", base=BASES),
        *expand("results/candidates/{base}.parquet", base=BASES),
        "results/funnel.parquet",
        "results/screening.parquet",
        "results/qe/manifest.parquet",
        "results/metrics/ebm.parquet",
        *expand("results/csp/{base}.parquet", base=BASES),
        "results/metrics/csp.parquet",
    ]
    if config["qe"]["run"]:
        outputs.append("results/qe/relaxed.parquet")
    return outputs


def per_base_inputs(pattern):
    """`--input BASE=PATH` for every base, for the rules that gather all bases."""
    return " ".join(f"--input {base}={pattern.format(base=base)}" for base in BASES)
