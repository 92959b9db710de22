rule download_structures:
    output:
        structures="results/data/structures.parquet",
    params:
        settings=settings("data"),
    log:
        "logs/download_structures/all.log",
    benchmark:
        "benchmarks/download_structures/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    priority: 10
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m matdisc download-structures --settings {params.settings:q} --threads {threads}"
        " --output structures={output.structures} --log {log}"


rule select_base_compounds:
    input:
        structures="results/data/structures.parquet",
    output:
        bases="results/data/base_compounds.parquet",
    params:
        settings=settings("base_compounds", "voxel"),
    log:
        "logs/select_base_compounds/all.log",
    benchmark:
        "benchmarks/select_base_compounds/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    shell:
        "python -m matdisc select-base-compounds --settings {params.settings:q}"
        " --input structures={input.structures} --output bases={output.bases} --log {log}"
