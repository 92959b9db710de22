rule filter_candidates:
    input:
        unpack(substitution_input),
        samples="results/samples/{base}.parquet",
        bases="results/data/base_compounds.parquet",
        structures="results/data/structures.parquet",
        voxels="results/voxels/cubic.zarr",
        cgcnn="results/models/cgcnn",
    output:
        candidates="results/candidates/{base}.parquet",
        cifs=directory("results/candidates/{base}"),
        funnel="results/funnel/{base}.parquet",
        pool="results/pool/{base}.parquet",
    params:
        settings=settings("filter", "train", "dask"),
        substitution=substitution_param,
    log:
        "logs/filter_candidates/{base}.log",
    benchmark:
        "benchmarks/filter_candidates/{base}.tsv"
    conda:
        "../../envs/matdisc.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "python -m matdisc filter-candidates --settings {params.settings:q} --threads {threads} --wildcard base={wildcards.base}"
        " --input samples={input.samples} --input bases={input.bases}"
        " --input structures={input.structures} --input voxels={input.voxels}"
        " --input cgcnn={input.cgcnn} {params.substitution}"
        " --output candidates={output.candidates} --output cifs={output.cifs}"
        " --output funnel={output.funnel} --output pool={output.pool} --log {log}"


rule collect_funnel:
    input:
        unpack(funnel_inputs),
    output:
        funnel="results/funnel.parquet",
    params:
        settings=settings("filter"),
        inputs=per_base_inputs("results/funnel/{base}.parquet"),
        sun=funnel_sun_input,
    log:
        "logs/collect_funnel/all.log",
    benchmark:
        "benchmarks/collect_funnel/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    shell:
        "python -m matdisc collect-funnel --settings {params.settings:q} {params.inputs} {params.sun}"
        " --output funnel={output.funnel} --log {log}"
