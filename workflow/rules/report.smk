# The results report: `snakemake --report results/report.html` after a run gathers these
# figures (and the CGCNN parity plots of train_cgcnn) with the captions of workflow/report/.


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
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m matdisc plot-report --settings {params.settings:q} --threads {threads}"
        " {params.inputs} {params.outputs} --log {log}"
