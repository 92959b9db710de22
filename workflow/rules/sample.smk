rule sample_structures:
    input:
        bases="results/data/base_compounds.parquet",
        voxels="results/voxels/cubic.zarr",
        unet="results/models/unet_chain.pt",
        vae="results/models/vae.pt",
    output:
        samples="results/samples/{base}.parquet",
    params:
        settings=settings("voxel", "train", "sample", drop=SUBSTITUTION_KEYS),
    log:
        "logs/sample_structures/{base}.log",
    benchmark:
        "benchmarks/sample_structures/{base}.tsv"
    conda:
        "../../envs/matdisc.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m matdisc sample-structures --settings {params.settings:q} --threads {threads} --wildcard base={wildcards.base}"
        " --input bases={input.bases} --input voxels={input.voxels}"
        " --input unet={input.unet} --input vae={input.vae}"
        " --output samples={output.samples} --log {log}"


# The ion-exchange baseline (sample.generators: substitution): data-mined substitutions into
# the base's own structure, judged beside the VAE's draws.
rule substitute_structures:
    input:
        bases="results/data/base_compounds.parquet",
    output:
        substitution="results/substitution/{base}.parquet",
    params:
        settings=settings("sample", drop=VAE_SAMPLE_KEYS),
    log:
        "logs/substitute_structures/{base}.log",
    benchmark:
        "benchmarks/substitute_structures/{base}.tsv"
    conda:
        "../../envs/matdisc.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m matdisc substitute-structures --settings {params.settings:q} --wildcard base={wildcards.base}"
        " --input bases={input.bases} --output substitution={output.substitution} --log {log}"


# sample.mode: random only: the seed's random-sampling figures over the draws of all bases.
rule random_sampling_stats:
    input:
        samples=expand("results/samples/{base}.parquet", base=BASES),
        cgcnn="results/models/cgcnn",
    output:
        metrics="results/metrics/random_sampling.parquet",
    params:
        settings=settings("sample", "filter", "train", drop=SUBSTITUTION_KEYS),
        inputs=per_base_inputs("results/samples/{base}.parquet"),
    log:
        "logs/random_sampling_stats/all.log",
    benchmark:
        "benchmarks/random_sampling_stats/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m matdisc random-sampling-stats --settings {params.settings:q} --threads {threads}"
        " {params.inputs} --input cgcnn={input.cgcnn}"
        " --output metrics={output.metrics} --log {log}"
