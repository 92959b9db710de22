rule write_qe_inputs:
    input:
        unpack(judged_input),
        candidates="results/candidates/{base}.parquet",
        screening="results/screening/{base}.parquet",
    output:
        inputs=directory("results/qe/{base}"),
    params:
        settings=settings("qe"),
        judged=judged_param,
    log:
        "logs/write_qe_inputs/{base}.log",
    benchmark:
        "benchmarks/write_qe_inputs/{base}.tsv"
    conda:
        "../../envs/matdisc.yaml"
    shell:
        "python -m matdisc write-qe-inputs --settings {params.settings:q} --wildcard base={wildcards.base}"
        " --input candidates={input.candidates} --input screening={input.screening} {params.judged}"
        " --output inputs={output.inputs} --log {log}"


rule collect_qe_manifest:
    input:
        expand("results/qe/{base}", base=BASES),
    output:
        manifest="results/qe/manifest.parquet",
    params:
        settings=settings("qe"),
        inputs=per_base_inputs("results/qe/{base}"),
    log:
        "logs/collect_qe_manifest/all.log",
    benchmark:
        "benchmarks/collect_qe_manifest/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    shell:
        "python -m matdisc collect-qe-manifest --settings {params.settings:q} {params.inputs}"
        " --output manifest={output.manifest} --log {log}"


# Off by default (qe.run: false): DFT is expensive. A CPU rule; MPI ranks = threads.
rule run_qe_relax:
    input:
        manifest="results/qe/manifest.parquet",
    output:
        relaxed="results/qe/relaxed.parquet",
    params:
        settings=settings("qe"),
    log:
        "logs/run_qe_relax/all.log",
    benchmark:
        "benchmarks/run_qe_relax/all.tsv"
    conda:
        "../../envs/qe.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=1440,
    shell:
        "python -m matdisc run-qe-relax --settings {params.settings:q} --threads {threads}"
        " --input manifest={input.manifest} --output relaxed={output.relaxed} --log {log}"
