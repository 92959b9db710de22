rule train_ebm:
    input:
        structures="results/data/structures.parquet",
    output:
        model="results/models/ebm.pt",
        metrics="results/metrics/ebm.parquet",
    params:
        settings=settings("train", "csp"),
    log:
        "logs/train_ebm/all.log",
    benchmark:
        "benchmarks/train_ebm/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    shell:
        "python -m matdisc train-ebm --settings {params.settings:q} --threads {threads}"
        " --input structures={input.structures}"
        " --output model={output.model} --output metrics={output.metrics} --log {log}"


rule predict_structures:
    input:
        candidates="results/candidates/{base}.parquet",
        ebm="results/models/ebm.pt",
        cgcnn="results/models/cgcnn",
    output:
        csp="results/csp/{base}.parquet",
    params:
        settings=settings("train", "csp", "stability"),
    log:
        "logs/predict_structures/{base}.log",
    benchmark:
        "benchmarks/predict_structures/{base}.tsv"
    conda:
        "../../envs/matdisc.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m matdisc predict-structures --settings {params.settings:q} --threads {threads} --wildcard base={wildcards.base}"
        " --input candidates={input.candidates} --input ebm={input.ebm} --input cgcnn={input.cgcnn}"
        " --output csp={output.csp} --log {log}"


rule evaluate_csp:
    input:
        structures="results/data/structures.parquet",
        ebm="results/models/ebm.pt",
    output:
        metrics="results/metrics/csp.parquet",
    params:
        settings=settings("train", "csp"),
    log:
        "logs/evaluate_csp/all.log",
    benchmark:
        "benchmarks/evaluate_csp/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m matdisc evaluate-csp --settings {params.settings:q} --threads {threads}"
        " --input structures={input.structures} --input ebm={input.ebm}"
        " --output metrics={output.metrics} --log {log}"
