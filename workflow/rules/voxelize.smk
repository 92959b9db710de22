rule voxelize_structures:
    input:
        structures="results/data/structures.parquet",
    output:
        voxels=directory("results/voxels/cubic.zarr"),
    params:
        settings=settings("voxel", "dask", drop=["voxel.inverse"]),
    log:
        "logs/voxelize_structures/all.log",
    benchmark:
        "benchmarks/voxelize_structures/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    priority: 10
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    shell:
        "python -m matdisc voxelize-structures --settings {params.settings:q} --threads {threads}"
        " --input structures={input.structures} --output voxels={output.voxels} --log {log}"
