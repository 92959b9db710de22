# Training rules run on a GPU when the profile gives them one (resources: gpu=1).


rule train_unet:
    input:
        voxels="results/voxels/cubic.zarr",
    output:
        model="results/models/unet.pt",
        metrics="results/metrics/unet.parquet",
    params:
        settings=settings("voxel", "train", "unet"),
    log:
        "logs/train_unet/all.log",
    benchmark:
        "benchmarks/train_unet/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    priority: 10
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    shell:
        "python -m matdisc train-unet --settings {params.settings:q} --threads {threads}"
        " --input voxels={input.voxels}"
        " --output model={output.model} --output metrics={output.metrics} --log {log}"


# Then fine-tunes the UNet on the VAE's reconstructions (unet_chain.pt, the UNet sampling
# uses; vae.unet_finetune_epochs) and scores the UNet and the whole chain (VAE -> UNet ->
# inverse) on the val split, so vae.parquet holds every Table 5 / Fig. 4 quantity;
# `matdisc evaluate-vae` re-scores saved models.
rule train_vae:
    input:
        voxels="results/voxels/cubic.zarr",
        unet="results/models/unet.pt",
    output:
        model="results/models/vae.pt",
        unet_chain="results/models/unet_chain.pt",
        metrics="results/metrics/vae.parquet",
    params:
        settings=settings("voxel", "train", "vae"),
    log:
        "logs/train_vae/all.log",
    benchmark:
        "benchmarks/train_vae/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    priority: 10
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    shell:
        "python -m matdisc train-vae --settings {params.settings:q} --threads {threads}"
        " --input voxels={input.voxels} --input unet={input.unet}"
        " --output model={output.model} --output unet_chain={output.unet_chain}"
        " --output metrics={output.metrics} --log {log}"


rule train_cgcnn:
    input:
        structures="results/data/structures.parquet",
    output:
        models=directory("results/models/cgcnn"),
        metrics="results/metrics/cgcnn.parquet",
        parity=report(
            directory("results/metrics/cgcnn_parity"),
            patterns=["cgcnn_parity_{property}.png"],
            caption="../report/parity.rst",
            category="3. Property models",
            labels={"property": "{property}"},
        ),
    params:
        settings=settings("train", "cgcnn"),
    log:
        "logs/train_cgcnn/all.log",
    benchmark:
        "benchmarks/train_cgcnn/all.tsv"
    conda:
        "../../envs/matdisc.yaml"
    # One thread, and a priority below the UNet -> VAE chain (10): on two cores it then
    # runs beside sampling, after the VAE, instead of alone before the UNet.
    priority: 5
    threads: 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    shell:
        "python -m matdisc train-cgcnn --settings {params.settings:q} --threads {threads}"
        " --input structures={input.structures}"
        " --output models={output.models} --output metrics={output.metrics}"
        " --output parity={output.parity} --log {log}"
