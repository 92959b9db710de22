# The candidate judge (stability.run): CHGNet relaxation, energy above the hull of the
# run's own phases, S.U.N. Reference phases are relaxed once for all bases (their cache,
# results/stability/cache/, is kept between runs).


rule relax_references:
    input:
        pools=expand("results/pool/{base}.parquet", base=BASES),
        structures="results/data/structures.parquet",
    output:
        references="results/stability/references.parquet",
    params:
        settings=settings("stability", "train"),
        inputs=per_base_inputs("results/pool/{base}.parquet", name="pool"),
    log:
        "logs/relax_references/all.log",
    benchmark:
        "benchmarks/relax_references/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m matdisc relax-references --settings {params.settings:q} --threads {threads}"
        " {params.inputs} --input structures={input.structures}"
        " --output references={output.references} --log {log}"


# With data.source mp, the Materials Project's own GGA/GGA+U entries of the same systems:
# e_above_hull_mp beside the hull of the run's phases.
rule fetch_mp_phases:
    input:
        pools=expand("results/pool/{base}.parquet", base=BASES),
    output:
        mp_phases="results/stability/mp_phases.parquet",
    params:
        settings=settings("data"),
        inputs=per_base_inputs("results/pool/{base}.parquet", name="pool"),
    log:
        "logs/fetch_mp_phases/all.log",
    benchmark:
        "benchmarks/fetch_mp_phases/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    shell:
        "python -m matdisc fetch-mp-phases --settings {params.settings:q}"
        " {params.inputs} --output mp_phases={output.mp_phases} --log {log}"


rule relax_candidates:
    input:
        unpack(mp_phases_input),
        pool="results/pool/{base}.parquet",
        references="results/stability/references.parquet",
        structures="results/data/structures.parquet",
    output:
        stability="results/stability/{base}.parquet",
        cifs=directory("results/stability/{base}"),
    params:
        settings=settings("stability", "train"),
        mp_phases=mp_phases_param,
    log:
        "logs/relax_candidates/{base}.log",
    benchmark:
        "benchmarks/relax_candidates/{base}.tsv"
    conda:
        "../../envs/matdisc.yaml"
    # One thread each: CHGNet on cells of a few atoms gains little from a second thread,
    # so two bases are judged side by side on two cores.
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    shell:
        "python -m matdisc relax-candidates --settings {params.settings:q} --threads {threads}"
        " --wildcard base={wildcards.base} --input pool={input.pool}"
        " --input references={input.references} --input structures={input.structures}"
        " {params.mp_phases} --output stability={output.stability} --output cifs={output.cifs} --log {log}"


rule collect_sun:
    input:
        stability=expand("results/stability/{base}.parquet", base=BASES),
        samples=expand("results/samples/{base}.parquet", base=BASES),
        substitution=expand("results/substitution/{base}.parquet", base=BASES) if SUBSTITUTION else [],
    output:
        sun="results/metrics/sun.parquet",
    params:
        settings=settings("stability"),
        stability=per_base_inputs("results/stability/{base}.parquet", name="stability"),
        samples=per_base_inputs("results/samples/{base}.parquet", name="samples"),
        substitution=(
            per_base_inputs("results/substitution/{base}.parquet", name="substitution")
            if SUBSTITUTION
            else ""
        ),
    log:
        "logs/collect_sun/all.log",
    benchmark:
        "benchmarks/collect_sun/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    shell:
        "python -m matdisc collect-sun --settings {params.settings:q}"
        " {params.stability} {params.samples} {params.substitution} --output sun={output.sun} --log {log}"


# What each generator cost (CPU time of its rules' benchmark records) and found (S.U.N.).
rule collect_generators:
    input:
        sun="results/metrics/sun.parquet",
        stability=expand("results/stability/{base}.parquet", base=BASES),
        costs=list(generator_costs().values()),
    output:
        generators="results/metrics/generators.parquet",
    params:
        settings=settings("sample"),
        stability=per_base_inputs("results/stability/{base}.parquet", name="stability"),
        costs=" ".join(f"--input cost:{k}={v}" for k, v in generator_costs().items()),
    log:
        "logs/collect_generators/all.log",
    benchmark:
        "benchmarks/collect_generators/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    shell:
        "python -m matdisc collect-generators --settings {params.settings:q}"
        " --input sun={input.sun} {params.stability} {params.costs}"
        " --output generators={output.generators} --log {log}"
