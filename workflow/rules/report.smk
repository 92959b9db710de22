# The results report: `snakemake --report results/report.html` after a run gathers these
# figures (and the CGCNN parity plots of train_cgcnn) with the captions of workflow/report/.


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


rule plot_report:
    input:
        unpack(report_inputs),
    output:
        **report_outputs(),
    params:
        settings=settings("base_compounds", "sample", "voxel", "train"),
        inputs=report_params,
        outputs=report_output_params,
    log:
        "logs/plot_report/all.log",
    benchmark:
        "benchmarks/plot_report/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m matdisc plot-report --settings {params.settings:q} --threads {threads}"
        " {params.inputs} {params.outputs} --log {log}"
