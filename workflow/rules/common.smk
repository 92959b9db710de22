# Config validation, wildcard constraints and every input function of the workflow.
import sys
from pathlib import Path

from matdisc.config import put_on_pythonpath, sections_json, validate_config
from matdisc.errors import UserError

try:
    validate_config(config, Path(workflow.basedir) / "config" / "schema.yaml")
except UserError as exc:
    sys.exit(f"matdisc: {exc}")

BASES = list(config["base_compounds"])

# Rules run `python -m matdisc`; with the repository's src/ on the path this also works in
# the per-rule conda environments of envs/ (snakemake --sdm conda), where matdisc itself
# is not installed. Jobs inherit the variable, on Slurm too (--export=ALL).
put_on_pythonpath(Path(workflow.basedir) / "src")


# Before anything is submitted: on a Slurm cluster without accounting, polling with sacct
# would make Snakemake wait forever; stop with the profile key to set instead.
onstart:
    from matdisc.cluster import check_slurm_status_command

    try:
        check_slurm_status_command(
            getattr(workflow.executor_plugin, "name", None),
            getattr(workflow.executor_settings, "status_command", None),
        )
    except UserError as exc:
        sys.exit(f"matdisc: {exc}")


# A base compound is a formula: letters and digits only, so no config value can name a
# path outside results/.
wildcard_constraints:
    base="[A-Z][A-Za-z0-9]*",


def settings(*names, drop=()):
    """The config sections a stage reads, as the JSON its command line takes.

    Returned as a params function so that braces in config values are not read as
    wildcards; the JSON is part of the job's params, so a config change re-runs it.
    ``drop``: dotted keys of those sections the stage does not read (not passed, so
    changing them does not re-run it).
    """
    text = sections_json(config, names, drop)

    def params(wildcards):
        return text

    return params


#: Keys of the sample section that only the substitution baseline reads (left out of the
#: VAE sampling's params, so turning them does not re-sample).
SUBSTITUTION_KEYS = (
    "sample.generators", "sample.substitution_threshold", "sample.substitution_max_shift"
)
#: And those only the VAE's sampling reads.
VAE_SAMPLE_KEYS = tuple(
    f"sample.{key}"
    for key in (
        "mode", "variance", "batch_size", "interpolate_to", "top_structure_types",
        "species_reader", "species_choice",
    )
)
SUBSTITUTION = "substitution" in config["sample"]["generators"]


def substitution_input(wildcards):
    """The substitution baseline's structures of a base, when it is a generator."""
    if SUBSTITUTION:
        return {"substitution": f"results/substitution/{wildcards.base}.parquet"}
    return {}


def substitution_param(wildcards):
    """`--input substitution=PATH` when the substitution baseline is a generator."""
    if SUBSTITUTION:
        return f"--input substitution=results/substitution/{wildcards.base}.parquet"
    return ""


def generator_costs():
    """Benchmark records of the rules each generator runs: `--input cost:GEN:JOB=PATH`
    pairs (the VAE's voxel store and training count in full: they serve every base)."""
    costs = {
        "vae:voxelize_structures": "benchmarks/voxelize_structures/all.tsv",
        "vae:train_unet": "benchmarks/train_unet/all.tsv",
        "vae:train_vae": "benchmarks/train_vae/all.tsv",
        **{f"vae:sample_structures:{b}": f"benchmarks/sample_structures/{b}.tsv" for b in BASES},
    }
    if SUBSTITUTION:
        costs |= {
            f"substitution:substitute_structures:{b}": f"benchmarks/substitute_structures/{b}.tsv"
            for b in BASES
        }
    return costs


def funnel_inputs(wildcards):
    """The per-base funnels, and the S.U.N. table when the judge runs (its rows follow)."""
    inputs = {"funnels": expand("results/funnel/{base}.parquet", base=BASES)}
    if config["stability"]["run"]:
        inputs["sun"] = "results/metrics/sun.parquet"
    return inputs


def funnel_sun_input(wildcards):
    """`--input sun=PATH` when the judge runs."""
    return "--input sun=results/metrics/sun.parquet" if config["stability"]["run"] else ""


def stability_input(wildcards):
    """The judge's table of a base, when the judge runs (screening takes its relaxed
    structures)."""
    if config["stability"]["run"]:
        return {"stability": f"results/stability/{wildcards.base}.parquet"}
    return {}


def stability_param(wildcards):
    """`--input stability=PATH` when the judge runs."""
    if config["stability"]["run"]:
        return f"--input stability=results/stability/{wildcards.base}.parquet"
    return ""


def mp_phases_input(wildcards):
    """The Materials Project's phases of the pools' systems, with data.source mp."""
    if config["data"]["source"] == "mp":
        return {"mp_phases": "results/stability/mp_phases.parquet"}
    return {}


def mp_phases_param(wildcards):
    """`--input mp_phases=PATH` with data.source mp."""
    if config["data"]["source"] == "mp":
        return "--input mp_phases=results/stability/mp_phases.parquet"
    return ""


def judged_input(wildcards):
    """The judge's table of a base and its reference phases, when the judge runs (QE inputs
    start from its relaxed structures; the hull phases get inputs too)."""
    if config["stability"]["run"]:
        return {**stability_input(wildcards), "references": "results/stability/references.parquet"}
    return {}


def judged_param(wildcards):
    """`--input stability=PATH --input references=PATH` when the judge runs."""
    if config["stability"]["run"]:
        return stability_param(wildcards) + " --input references=results/stability/references.parquet"
    return ""


def final_outputs(wildcards):
    """What the target `all` builds: the last output of every stage for every base."""
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
        *(
            ["results/metrics/sun.parquet", "results/metrics/generators.parquet"]
            if config["stability"]["run"]
            else []
        ),
        "results/qe/manifest.parquet",
        "results/report/funnel.png",
    ]
    if config["sample"]["mode"] == "random":
        outputs.append("results/metrics/random_sampling.parquet")
    if config["qe"]["run"]:
        outputs.append("results/qe/relaxed.parquet")
    if config["csp"]["run"]:
        outputs += [
            "results/metrics/ebm.parquet",
            *expand("results/csp/{base}.parquet", base=BASES),
            "results/metrics/csp.parquet",
        ]
    return outputs


def per_base_inputs(pattern, name=None):
    """`--input BASE=PATH` (or `--input NAME:BASE=PATH`) for every base, for the rules
    that gather all bases."""
    prefix = f"{name}:" if name else ""
    return " ".join(f"--input {prefix}{base}={pattern.format(base=base)}" for base in BASES)


# --- the report's figures (workflow/rules/report.smk) ---------------------------------
def report_inputs(wildcards):
    """The run's tables the figures are drawn from; the judge's when it runs."""
    inputs = {
        "funnel": "results/funnel.parquet",
        "unet": "results/models/unet.pt",
        "vae": "results/models/vae.pt",
        "voxels": "results/voxels/cubic.zarr",
        "bases": "results/data/base_compounds.parquet",
    }
    if config["stability"]["run"]:
        inputs["sun"] = "results/metrics/sun.parquet"
        inputs["generators"] = "results/metrics/generators.parquet"
        inputs["references"] = "results/stability/references.parquet"
        for base in BASES:
            inputs[f"stability_{base}"] = f"results/stability/{base}.parquet"
    return inputs


def report_outputs():
    """The figures: the judge's three only when it runs."""
    outputs = {
        "funnel": report(
            "results/report/funnel.png", caption="../report/funnel.rst", category="1. Funnel"
        ),
        "curves": report(
            "results/report/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="2. Generator",
        ),
        "latent": report(
            "results/report/latent.png", caption="../report/latent.rst", category="2. Generator"
        ),
    }
    if config["stability"]["run"]:
        outputs["cells"] = report(
            "results/report/cells.png", caption="../report/cells.rst", category="4. Judge"
        )
        outputs["hulls"] = report(
            directory("results/report/hulls"),
            patterns=["hull_{base}.png"],
            caption="../report/hull.rst",
            category="4. Judge",
            labels={"base": "{base}"},
        )
        outputs["sun"] = report(
            "results/report/sun.html", caption="../report/sun.rst", category="4. Judge"
        )
    return outputs


def report_params(wildcards, input):
    """`--input NAME=PATH` for every input (stability tables as stability:BASE)."""
    return " ".join(
        f"--input {name.replace('stability_', 'stability:')}={path}"
        for name, path in input.items()
    )


def report_output_params(wildcards, output):
    return " ".join(f"--output {name}={path}" for name, path in output.items())
