# matdisc: Materials Project -> voxels -> UNet / Cond-DFC-VAE / CGCNN -> sampling around
# base compounds -> five-stage filter -> screening -> Quantum ESPRESSO inputs, plus
# ContinuouSP structure prediction. Run: snakemake --cores all all
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/voxelize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/filter.smk"
include: "workflow/rules/stability.smk"
include: "workflow/rules/screen.smk"
include: "workflow/rules/qe.smk"
include: "workflow/rules/csp.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs,
    default_target: True
