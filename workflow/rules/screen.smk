rule screen_candidates:
    input:
        unpack(stability_input),
        candidates="results/candidates/{base}.parquet",
        cgcnn="results/models/cgcnn",
    output:
        screening="results/screening/{base}.parquet",
    params:
        settings=settings("screen", "train", "dask"),
        stability=stability_param,
    log:
        "logs/screen_candidates/{base}.log",
    benchmark:
        "benchmarks/screen_candidates/{base}.tsv"
    conda:
        "../../envs/matdisc.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m matdisc screen-candidates --settings {params.settings:q} --threads {threads} --wildcard base={wildcards.base}"
        " --input candidates={input.candidates} --input cgcnn={input.cgcnn} {params.stability}"
        " --output screening={output.screening} --log {log}"


rule collect_screening:
    input:
        expand("results/screening/{base}.parquet", base=BASES),
    output:
        screening="results/screening.parquet",
    params:
        settings=settings("screen"),
        inputs=per_base_inputs("results/screening/{base}.parquet"),
    log:
        "logs/collect_screening/all.log",
    benchmark:
        "benchmarks/collect_screening/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    shell:
        "python -m matdisc collect-screening --settings {params.settings:q} {params.inputs}"
        " --output screening={output.screening} --log {log}"
