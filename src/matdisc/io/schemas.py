"""One pyarrow schema per parquet table the pipeline writes.

Writing a table (:func:`matdisc.io.parquet.write_table`) casts the frame to its schema
and fails on a missing or an extra column, so every consumer can rely on these names,
types and units. Units are part of the column names.
"""

from __future__ import annotations

import pyarrow as pa

#: The eight properties of the seed (Court et al. 2020, Table 1), in its order, with units.
PROPERTY_COLUMNS: tuple[str, ...] = (
    "e_form_ev_per_atom",
    "energy_ev_per_atom",
    "band_gap_ev",
    "k_vrh_gpa",
    "g_vrh_gpa",
    "poisson_ratio",
    "refractive_index",
    "dielectric_total",
)

#: Structure classes of the seed's training data, by anonymous formula.
STRUCTURE_CLASSES: tuple[str, ...] = (
    "binary_AB",
    "perovskite_ABX3",
    "heusler_X2YZ",
    "half_heusler_XYZ",
    "other",
)

SPLITS: tuple[str, ...] = ("train", "val", "test")

STRUCTURES = pa.schema(
    [
        pa.field("material_id", pa.string(), nullable=False),
        pa.field("formula", pa.string(), nullable=False),  # reduced formula, e.g. SrTiO3
        pa.field("formula_anonymous", pa.string(), nullable=False),  # e.g. ABC3
        pa.field("structure_class", pa.string(), nullable=False),
        pa.field("crystal_system", pa.string(), nullable=False),
        pa.field("spacegroup_number", pa.int16(), nullable=False),
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("structure_json", pa.string(), nullable=False),  # pymatgen Structure.as_dict()
        *(pa.field(name, pa.float64()) for name in PROPERTY_COLUMNS),
        pa.field("source", pa.string(), nullable=False),  # provenance of row and labels
        pa.field("split", pa.string(), nullable=False),
    ]
)

BASE_COMPOUNDS = pa.schema(
    [
        pa.field("base", pa.string(), nullable=False),  # the name used in config and paths
        pa.field("material_id", pa.string(), nullable=False),
        pa.field("formula", pa.string(), nullable=False),
        pa.field("formula_anonymous", pa.string(), nullable=False),
        pa.field("structure_class", pa.string(), nullable=False),
        pa.field("spacegroup_number", pa.int16(), nullable=False),
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("e_form_ev_per_atom", pa.float64()),
        pa.field("split", pa.string(), nullable=False),  # train / val / test of the data split
        pa.field("structure_json", pa.string(), nullable=False),
    ]
)

#: One row per candidate of every base: its pw.x input (or why it has none), the choices
#: made for it, and the CGCNN-predicted properties (``pred_`` + PROPERTY_COLUMNS).
QE_MANIFEST = pa.schema(
    [
        pa.field("base", pa.string(), nullable=False),
        pa.field("candidate_id", pa.string(), nullable=False),  # hull:<reference_id> for a phase
        pa.field("kind", pa.string(), nullable=False),  # candidate / hull_phase (qe.hull_phases)
        pa.field("generator", pa.string()),  # of a candidate (null for a hull phase)
        pa.field("formula", pa.string(), nullable=False),
        pa.field("nsites", pa.int32()),
        pa.field("input_path", pa.string()),  # pw.in; null when no input could be written
        pa.field("job_script_path", pa.string()),  # Slurm batch script next to pw.in
        pa.field("kpoints_a", pa.int16()),  # Monkhorst-Pack divisions along a, b, c
        pa.field("kpoints_b", pa.int16()),
        pa.field("kpoints_c", pa.int16()),
        pa.field("ecutwfc_ry", pa.float64()),
        pa.field("ecutrho_ry", pa.float64()),
        pa.field("nspin", pa.int8()),
        pa.field("spacegroup_number", pa.int16()),  # of the structure written (qe.symprec_angstrom)
        pa.field("start_structure", pa.string()),  # relaxed (CHGNet, the judge) / generated
        pa.field(
            "e_above_hull_ev_per_atom", pa.float64()
        ),  # the judge's (CHGNet); rows in its order
        pa.field("pseudo_family", pa.string()),  # sssp-efficiency / sssp-precision / folder / map
        pa.field("pseudopotentials", pa.string()),  # JSON element -> UPF file name
        pa.field("pseudo_dir", pa.string()),  # where this machine's pw.x looks for them
        pa.field("pseudo_files_present", pa.bool_()),  # all of them there
        pa.field("pseudo_md5_ok", pa.bool_()),  # md5 as the family's table; null = unknown
        # the structure written to pw.in (the candidate in qe.cell), else the candidate's
        pa.field("structure_json", pa.string(), nullable=False),
        pa.field("error", pa.string()),  # why no input was written; null when it was
        *(pa.field(f"pred_{name}", pa.float64()) for name in PROPERTY_COLUMNS),
    ]
)

#: One row per manifest row: the pw.x vc-relax outcome and the Table 3 comparisons of
#: the seed (generated vs relaxed; percentages of the generated values).
QE_RELAXED = pa.schema(
    [
        pa.field("base", pa.string(), nullable=False),
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("formula", pa.string(), nullable=False),
        pa.field("nsites", pa.int32()),
        pa.field("status", pa.string(), nullable=False),  # converged/not_converged/failed/no_input
        pa.field("error", pa.string()),  # reason when not converged
        pa.field("output_path", pa.string()),  # pw.out
        pa.field("mpi_ranks", pa.int16()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("n_scf_cycles", pa.int32()),  # ionic iterations (scf cycles of the relaxation)
        pa.field("n_bfgs_steps", pa.int32()),
        pa.field("final_energy_ev", pa.float64()),  # total energy of the last structure
        pa.field("final_energy_ev_per_atom", pa.float64()),
        pa.field("bond_change_pct", pa.float64()),  # mean |Δ bond length| (Table 3 |Δbonds|)
        pa.field("max_bond_change_pct", pa.float64()),
        pa.field("n_bonds", pa.int32()),
        pa.field("cell_change_pct", pa.float64()),  # mean |Δa|,|Δb|,|Δc| (Table 3 |Δcell|)
        pa.field("angle_change_deg", pa.float64()),  # largest |Δα|,|Δβ|,|Δγ|
        pa.field("volume_change_pct", pa.float64()),  # signed
        pa.field("a_generated_angstrom", pa.float64()),
        pa.field("a_relaxed_angstrom", pa.float64()),
        pa.field("b_generated_angstrom", pa.float64()),
        pa.field("b_relaxed_angstrom", pa.float64()),
        pa.field("c_generated_angstrom", pa.float64()),
        pa.field("c_relaxed_angstrom", pa.float64()),
        pa.field("pred_e_form_ev_per_atom", pa.float64()),  # CGCNN, for |ΔEf| once DFT Ef exists
        pa.field("relaxed_structure_json", pa.string()),
        pa.field("kind", pa.string(), nullable=False),  # candidate / hull_phase
        # candidates: DFT formation energy and energy above the hull of the relaxed hull phases
        pa.field("dft_e_form_ev_per_atom", pa.float64()),
        pa.field("dft_e_above_hull_ev_per_atom", pa.float64()),
        pa.field("dft_hull_reason", pa.string()),  # why they are NaN
    ]
)

#: CGCNN test-split metrics per property (the seed's Table 1), results/metrics/cgcnn.parquet.
CGCNN_METRICS = pa.schema(
    [
        pa.field("property", pa.string(), nullable=False),  # a PROPERTY_COLUMNS name
        pa.field("trained", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),  # why not trained (null when trained)
        pa.field("target_scale", pa.string(), nullable=False),  # "linear" or "log10"
        pa.field("mae", pa.float64()),  # on target_scale, in the property's unit (or log10 of it)
        pa.field("smape_percent", pa.float64()),  # on target_scale
        pa.field("mae_original_units", pa.float64()),  # back-transformed, the column's unit
        pa.field("n_train", pa.int64(), nullable=False),
        pa.field("n_val", pa.int64(), nullable=False),
        pa.field("n_test", pa.int64(), nullable=False),
        pa.field("transfer_from", pa.string()),  # property whose conv layer was fine-tuned
        pa.field("epochs_run", pa.int64(), nullable=False),
        pa.field("train_seconds", pa.float64(), nullable=False),
        pa.field("paper_mae", pa.float64()),  # Court et al. 2020, Table 1
        pa.field("paper_smape_percent", pa.float64()),
        pa.field("paper_n_train", pa.int64()),
        pa.field("paper_n_test", pa.int64()),
    ]
)

#: CGCNN predictions per filtered candidate, results/screening.parquet (and per base).
SCREENING = pa.schema(
    [
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("base", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),  # vae / substitution
        pa.field("formula", pa.string(), nullable=False),
        # predicted; NaN where the model is not trained, and refractive_index and
        # dielectric_total NaN where the predicted band gap is zero (screen.zero_gap_threshold_ev)
        *(pa.field(name, pa.float64()) for name in PROPERTY_COLUMNS),
    ]
)

#: name -> schema; the name is what :func:`write_table` and :func:`read_table` take.
#: results/metrics/{unet,vae}.parquet: one row per (pipeline, metric), long form.
#: pipeline: training | unet_true_density | vae | vae_unet_chain |
#: vae_unet_chain_charge_aware (the chain read as sampling reads it by default,
#: sample.species_choice: charge_aware; see matdisc.models.evaluate); paper_value: the seed's figure (NaN where none).
RECONSTRUCTION_METRICS = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),  # unet | vae
        pa.field("pipeline", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # the split scored (val)
        pa.field("metric", pa.string(), nullable=False),  # units in the name
        pa.field("value", pa.float64()),
        pa.field("paper_value", pa.float64()),
        pa.field("n_structures", pa.int64(), nullable=False),
    ]
)

#: results/samples/{base}.parquet: every latent draw of the sample stage, with its
#: structure or the reason there is none (matdisc.segment reasons: no_atoms,
#: too_many_sites, inconsistent, bad_lattice).
SAMPLES = pa.schema(
    [
        pa.field("base", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),  # draw number, 0..N-1
        pa.field("mode", pa.string(), nullable=False),  # targeted | random | interpolate
        pa.field("decile", pa.int8(), nullable=False),  # formation-energy condition 0..9
        pa.field("t", pa.float64()),  # interpolation fraction (NaN unless interpolate)
        pa.field("z_distance", pa.float64()),  # |z - mu_base| (|z| for random draws)
        pa.field("reason", pa.string()),  # null when a structure was read from the grid
        pa.field("n_sites", pa.int32(), nullable=False),  # atoms found (also when rejected)
        pa.field("lattice_a_angstrom", pa.float64()),  # cell lengths from the decoded coords
        pa.field("lattice_b_angstrom", pa.float64()),
        pa.field("lattice_c_angstrom", pa.float64()),
        pa.field("min_distance_angstrom", pa.float64()),  # periodic images included; NaN = none
        pa.field("formula", pa.string()),  # reduced formula (null without structure)
        pa.field("formula_anonymous", pa.string()),
        pa.field("structure_json", pa.string()),  # pymatgen Structure.as_dict(); null = none
        # the UNet's read (matdisc.segment.readback; null for the channel reader and the
        # ion-exchange baseline): the formula before sample.species_choice, its strict
        # validity, the rank of the combination taken (0 = as read, -1 = none valid) and
        # each orbit's top-3 elements with their probabilities
        pa.field("formula_unconstrained", pa.string()),
        pa.field("valid_unconstrained", pa.bool_()),
        pa.field("choice_rank", pa.int32()),
        pa.field("species_alternatives_json", pa.string()),
    ]
)

#: The samples columns of the UNet's species read (null elsewhere).
READ_COLUMNS = (
    "formula_unconstrained",
    "valid_unconstrained",
    "choice_rank",
    "species_alternatives_json",
)

#: results/substitution/{base}.parquet: the ion-exchange baseline's structures of one base
#: (matdisc.sample.substitution), the samples table's columns and two more.
SUBSTITUTIONS = pa.schema(
    [
        *SAMPLES,
        pa.field("probability", pa.float64()),  # the substitution predictor's; NaN = similarity
        pa.field("substitutions_json", pa.string(), nullable=False),  # {old element: new}
    ]
)

#: results/metrics/generators.parquet: what each generator cost and found.
GENERATORS = pa.schema(
    [
        pa.field("generator", pa.string(), nullable=False),
        pa.field("draws", pa.int64(), nullable=False),  # structures proposed, all bases
        pa.field("sun", pa.int64(), nullable=False),  # stable, unique, novel
        pa.field("stable", pa.int64(), nullable=False),
        pa.field("cpu_seconds", pa.float64(), nullable=False),  # generation, training included
        pa.field("cpu_seconds_json", pa.string(), nullable=False),  # rule -> CPU seconds
        pa.field("sun_per_cpu_hour", pa.float64()),
        # of the S.U.N. structures: composition in the run's data (a new polymorph) or not
        pa.field("sun_known_composition", pa.int64(), nullable=False),
        pa.field("sun_new_composition", pa.int64(), nullable=False),
    ]
)

#: results/candidates/{base}.parquet: the filtered candidates of one base, closest to the
#: base's formation energy first (matdisc.filters.funnel).
CANDIDATES = pa.schema(
    [
        # {base}-s{sample_index:05d} (vae) or {base}-x{sample_index:05d} (substitution)
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("base", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),  # vae / substitution
        pa.field("rank", pa.int32(), nullable=False),  # 1 = closest to the base's Ef
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("formula", pa.string(), nullable=False),
        pa.field("formula_anonymous", pa.string(), nullable=False),
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("lattice_a_angstrom", pa.float64()),
        pa.field("lattice_b_angstrom", pa.float64()),
        pa.field("lattice_c_angstrom", pa.float64()),
        pa.field("min_distance_angstrom", pa.float64()),
        pa.field("e_form_ev_per_atom", pa.float64()),  # CGCNN-predicted
        pa.field("base_e_form_ev_per_atom", pa.float64()),  # the reference of the window
        pa.field("delta_e_form_ev_per_atom", pa.float64()),  # predicted - base
        # false = it holds an element of filter.exclude_elements (excluded_elements,
        # comma-separated; "" if none): a candidate with a CIF, but no DFT input
        pa.field("dft_eligible", pa.bool_(), nullable=False),
        pa.field("excluded_elements", pa.string(), nullable=False),
        pa.field("cif_path", pa.string(), nullable=False),
        pa.field("structure_json", pa.string(), nullable=False),
    ]
)

#: results/funnel/{base}.parquet and results/funnel.parquet: samples left after each
#: filter step (seed Table 2); rows with base = "average" hold the mean over the bases.
FUNNEL = pa.schema(
    [
        pa.field("base", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),  # vae / substitution
        pa.field("step", pa.int8(), nullable=False),  # 0 = initial samples
        pa.field("stage", pa.string(), nullable=False),
        pa.field("description", pa.string(), nullable=False),
        pa.field("count", pa.float64(), nullable=False),  # whole numbers except averages
        pa.field("cumulative_pct", pa.float64()),  # 100 * count / initial samples
        pa.field("paper_average_n", pa.float64()),  # seed Table 2 (NaN past its rows)
        pa.field("paper_cumulative_pct", pa.float64()),
    ]
)

#: results/metrics/random_sampling.parquet (sample.mode: random): the seed's first
#: generation experiment. metric: n_draws, valid (min distance >= threshold),
#: negative_ef (of valid, CGCNN Ef < 0), structure_type (one row per top anonymous formula).
RANDOM_SAMPLING = pa.schema(
    [
        pa.field("metric", pa.string(), nullable=False),
        pa.field("formula_anonymous", pa.string()),  # structure_type rows only
        pa.field("count", pa.int64(), nullable=False),
        pa.field("fraction", pa.float64()),  # of draws (valid), of valid (negative_ef, types)
        pa.field("paper_fraction", pa.float64()),  # 0.76 valid, 0.59 negative Ef (seed)
    ]
)

# ContinuouSP (matdisc.csp): EBM training curve, CSP evaluation, predicted structures.
EBM_METRICS = pa.schema(
    [
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("loss", pa.float64()),  # mean E(data) - mean E(sample) (+ L2 term)
        pa.field("energy_data", pa.float64()),  # mean energy of the data crystals
        pa.field("energy_sample", pa.float64()),  # mean energy of the MALA samples
        pa.field("acceptance", pa.float64()),  # mean MALA acceptance rate
        # mean |∇N|² of data and samples (the grad_penalty term; null when it is off)
        pa.field("squared_gradient", pa.float64()),
        pa.field("seconds", pa.float64()),  # wall time since the start of training
    ]
)
CSP_METRICS = pa.schema(
    [
        pa.field("material_id", pa.string(), nullable=False),  # one held-out crystal
        pa.field("formula", pa.string(), nullable=False),
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("n_samples", pa.int32(), nullable=False),
        pa.field("n_matched", pa.int32(), nullable=False),  # samples matching the crystal
        pa.field("matched", pa.bool_(), nullable=False),  # at least one sample matches
        pa.field("rms_dist", pa.float64()),  # smallest get_rms_dist RMS over matches; null if none
        pa.field("matched_k1", pa.bool_(), nullable=False),  # K = 1: the first sample matches
        pa.field("rms_dist_k1", pa.float64()),  # its RMS; null if it does not match
        pa.field("matched_lowest_energy", pa.bool_(), nullable=False),  # the lowest-energy sample
        pa.field("rms_dist_lowest_energy", pa.float64()),
        pa.field("best_energy", pa.float64()),  # lowest EBM energy among the samples
    ]
)
CSP_PREDICTIONS = pa.schema(
    [
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("base", pa.string(), nullable=False),
        pa.field("formula", pa.string(), nullable=False),
        pa.field("sample", pa.int32(), nullable=False),  # index of the MALA chain
        pa.field("structure_json", pa.string(), nullable=False),  # predicted structure
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("spacegroup_number", pa.int16()),  # spglib, symprec 0.1 Å; null if it fails
        pa.field("crystal_system", pa.string()),
        pa.field("ebm_energy", pa.float64(), nullable=False),
        pa.field("rank_ebm", pa.int32(), nullable=False),  # 1 = lowest EBM energy
        pa.field("pred_e_form_ev_per_atom", pa.float64()),  # CGCNN formation energy
        pa.field("rank_e_form", pa.int32()),  # 1 = lowest predicted formation energy
        pa.field("candidate_e_form_ev_per_atom", pa.float64()),  # of the VAE cubic structure
        pa.field("matches_candidate", pa.bool_(), nullable=False),  # StructureMatcher fit
        # CHGNet (csp.relax_samples; null without): the sample relaxed with the judge's
        # settings, its distinct-structure group (0 = the lowest-energy polymorph found) ...
        pa.field("relaxed_structure_json", pa.string()),
        pa.field("chgnet_energy_ev_per_atom", pa.float64()),
        pa.field("relaxed_spacegroup_number", pa.int16()),
        pa.field("relax_converged", pa.bool_()),
        pa.field("polymorph", pa.int32()),
        pa.field("matches_relaxed_candidate", pa.bool_()),
        # ... and, repeated on each of its rows, the candidate's cubic structure relaxed:
        # its energy, space group, height above the lowest polymorph found (0 = it is that)
        pa.field("candidate_chgnet_energy_ev_per_atom", pa.float64()),
        pa.field("candidate_relaxed_spacegroup_number", pa.int16()),
        pa.field("candidate_above_lowest_ev_per_atom", pa.float64()),
        pa.field("candidate_is_lowest", pa.bool_()),
        pa.field("n_polymorphs", pa.int32()),
    ]
)

# The candidate judge (matdisc.stability): validity pool, reference phases, judged
# structures and the S.U.N. table.

#: results/pool/{base}.parquet: every draw that passed the distance, stoichiometry and
#: composition-validity stages, whatever its CGCNN Ef: what the judge sees.
POOL = pa.schema(
    [
        pa.field("base", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),  # vae / substitution
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("formula", pa.string(), nullable=False),
        pa.field("formula_anonymous", pa.string(), nullable=False),
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("valid_strict", pa.bool_(), nullable=False),  # common oxidation states
        pa.field("valid_cdvae", pa.bool_(), nullable=False),  # CDVAE's SMACT rule
        pa.field("in_training", pa.bool_(), nullable=False),  # composition of the train split
        pa.field("candidate_id", pa.string()),  # when the seed's filter selected it
        pa.field("structure_json", pa.string(), nullable=False),
    ]
)

#: results/stability/references.parquet (and its cache): reference phases relaxed by CHGNet.
REFERENCES = pa.schema(
    [
        pa.field("reference_id", pa.string(), nullable=False),  # material id, or ase:<El>
        pa.field("formula", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # data (the run's) / ase (element)
        pa.field("model", pa.string(), nullable=False),
        pa.field("settings", pa.string(), nullable=False),  # digest of model + relax settings
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("energy_ev_per_atom", pa.float64()),  # CHGNet, relaxed (MP2020-compatible)
        pa.field("converged", pa.bool_(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),
        pa.field("seconds", pa.float64()),
        pa.field("structure_json", pa.string(), nullable=False),  # relaxed
    ]
)

#: results/stability/mp_phases.parquet (data.source mp): the Materials Project's GGA/GGA+U
#: thermo entries of the pools' chemical systems, for ``e_above_hull_mp``.
MP_PHASES = pa.schema(
    [
        pa.field("material_id", pa.string(), nullable=False),
        pa.field("formula", pa.string(), nullable=False),
        pa.field("energy_ev_per_atom", pa.float64()),  # MP2020-corrected total energy
        pa.field("e_above_hull_ev_per_atom", pa.float64()),  # the Materials Project's own
        pa.field("thermo_type", pa.string(), nullable=False),
    ]
)

#: results/stability/{base}.parquet: one row per distinct structure of the pool (draws of
#: the same composition and space group are one structure; the lowest single point kept).
STABILITY = pa.schema(
    [
        pa.field("base", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),  # vae / substitution
        pa.field("structure_id", pa.string(), nullable=False),  # {base}-s{sample_index}
        pa.field("sample_index", pa.int32(), nullable=False),  # the draw kept
        pa.field("n_draws", pa.int32(), nullable=False),  # draws of this structure
        pa.field("formula", pa.string(), nullable=False),
        pa.field("nsites", pa.int32(), nullable=False),
        pa.field("spacegroup_number", pa.int16(), nullable=False),  # generated, symprec 0.1 Å
        pa.field("valid_strict", pa.bool_(), nullable=False),
        pa.field("valid_cdvae", pa.bool_(), nullable=False),
        pa.field("candidate_id", pa.string()),  # one of the seed's top-k candidates
        pa.field("single_point_ev_per_atom", pa.float64()),  # CHGNet, generated structure
        pa.field("e_above_hull_single_ev_per_atom", pa.float64()),  # of that single point
        pa.field("relaxed", pa.bool_(), nullable=False),
        pa.field("energy_ev_per_atom", pa.float64()),  # CHGNet, relaxed
        pa.field("relax_steps", pa.int32()),
        pa.field("relax_converged", pa.bool_()),
        pa.field("relax_seconds", pa.float64()),
        pa.field("rmsd_angstrom", pa.float64()),  # generated -> relaxed (StructureMatcher)
        pa.field("volume_change_pct", pa.float64()),
        pa.field("spacegroup_relaxed", pa.int16()),
        pa.field("magmoms_json", pa.string()),  # CHGNet magnetic moments (μB per site)
        pa.field("e_above_hull_ev_per_atom", pa.float64()),  # relaxed (else null)
        pa.field("decomposition_json", pa.string()),  # formula -> fraction
        pa.field("n_reference_phases", pa.int32(), nullable=False),
        pa.field("empty_subsystems", pa.string()),  # comma-separated, e.g. Gd-Pd,Ni-Pd
        pa.field("thin_hull", pa.bool_(), nullable=False),  # a binary sub-system has no phase
        pa.field("hull_reason", pa.string()),  # why e_above_hull is NaN
        # against the Materials Project's GGA/GGA+U entries (data.source mp; else null)
        pa.field("e_above_hull_mp_ev_per_atom", pa.float64()),
        pa.field("n_mp_phases", pa.int32()),
        pa.field("mp_hull_reason", pa.string()),
        pa.field("stable", pa.bool_(), nullable=False),  # e_above_hull <= threshold
        pa.field("novel", pa.bool_(), nullable=False),  # no match in the run's data
        # its composition is in the run's data (novel and known: a new polymorph)
        pa.field("composition_known", pa.bool_(), nullable=False),
        pa.field("matched_material_id", pa.string()),  # the data structure it matches
        pa.field("rank", pa.int32()),  # by e_above_hull, then |ΔEf| (relaxed rows)
        pa.field("cif_path", pa.string()),  # symmetrised CIF of the relaxed structure
        pa.field("structure_json", pa.string(), nullable=False),  # generated
        pa.field("relaxed_structure_json", pa.string()),
    ]
)

#: results/metrics/sun.parquet: per base and overall (``base = "all"``).
SUN = pa.schema(
    [
        pa.field("base", pa.string(), nullable=False),
        pa.field("generator", pa.string(), nullable=False),  # vae (ion exchange: issue #13)
        pa.field("draws", pa.int64(), nullable=False),  # every draw made, failed included
        pa.field("valid", pa.int64(), nullable=False),  # draws in the pool
        pa.field("judged", pa.int64(), nullable=False),  # distinct structures
        pa.field("relaxed", pa.int64(), nullable=False),
        pa.field("stable", pa.int64(), nullable=False),  # e_above_hull <= threshold
        pa.field("stable_below_hull", pa.int64(), nullable=False),  # e_above_hull <= 0
        pa.field("unique", pa.int64(), nullable=False),  # stable and unique
        pa.field("novel", pa.int64(), nullable=False),  # stable, unique and novel = S.U.N.
        pa.field("sun_rate", pa.float64()),  # S.U.N. / draws
        pa.field("sun_rate_low", pa.float64()),  # Wilson 95 % interval
        pa.field("sun_rate_high", pa.float64()),
        pa.field("lower_bound", pa.bool_(), nullable=False),  # not every structure relaxed
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "pool": POOL,
    "references": REFERENCES,
    "mp_phases": MP_PHASES,
    "substitutions": SUBSTITUTIONS,
    "generators": GENERATORS,
    "stability": STABILITY,
    "sun": SUN,
    "structures": STRUCTURES,
    "base_compounds": BASE_COMPOUNDS,
    "qe_manifest": QE_MANIFEST,
    "qe_relaxed": QE_RELAXED,
    "cgcnn_metrics": CGCNN_METRICS,
    "screening": SCREENING,
    "reconstruction_metrics": RECONSTRUCTION_METRICS,
    "samples": SAMPLES,
    "candidates": CANDIDATES,
    "funnel": FUNNEL,
    "random_sampling": RANDOM_SAMPLING,
    "ebm_metrics": EBM_METRICS,
    "csp_metrics": CSP_METRICS,
    "csp_predictions": CSP_PREDICTIONS,
}
