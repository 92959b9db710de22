"""The ``snapshot`` source: real Materials Project data shipped in a PyPI sdist.

The sdist of ``matminer==0.4.0`` carries four MP datasets as CSV under
``matminer/datasets/``. We fetch the sdist with pip (no install), check its sha256, and
read the CSVs straight from the archive:

- ``flla_2015`` (3,938 materials): structure (a Python-repr dict), formation energy/atom;
- ``elastic_tensor`` (1,181): K_VRH, G_VRH, Poisson ratio, structure as POSCAR;
- ``dielectric_constant`` (1,056): band gap, refractive index n, total dielectric
  constant (``poly_total``, the polycrystalline average of the total tensor), POSCAR;
- ``piezoelectric_tensor`` (941): structures only (none of the eight properties).

Quirks handled here: each file starts with a ``# ref:`` line; in ``dielectric_constant``
and ``piezoelectric_tensor`` every data row has one more leading column than the header.

Energy per atom (total DFT energy) is in none of these files and is left NaN: we do not
invent labels. Rows are merged by material id; the structure is taken from the first of
flla_2015, elastic_tensor, dielectric_constant, piezoelectric_tensor that has it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from matdisc.data.records import Record
from matdisc.errors import UserError

log = logging.getLogger(__name__)

DATASETS = ("flla_2015", "elastic_tensor", "dielectric_constant", "piezoelectric_tensor")

#: dataset -> {our property column: dataset column}
PROPERTY_MAP: dict[str, dict[str, str]] = {
    "flla_2015": {"e_form_ev_per_atom": "formation_energy_per_atom"},
    "elastic_tensor": {
        "k_vrh_gpa": "K_VRH",
        "g_vrh_gpa": "G_VRH",
        "poisson_ratio": "poisson_ratio",
    },
    "dielectric_constant": {
        "band_gap_ev": "band_gap",
        "refractive_index": "n",
        "dielectric_total": "poly_total",
    },
    "piezoelectric_tensor": {},
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sdist(package: str, version: str, sha256: str, cache_dir: Path) -> Path:
    """The verified sdist of ``package==version`` in ``cache_dir``, downloaded with pip if needed.

    A cached file with the wrong checksum is removed and fetched again; a download that
    still does not match is an error (never used).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"{package}-{version}.tar.gz"
    path = cache_dir / name
    if path.is_file() and sha256_of(path) == sha256:
        log.info("using cached %s", path)
        return path
    if path.is_file():
        log.warning("cached %s has the wrong sha256; downloading it again", path)
        path.unlink()
    log.info("downloading %s==%s (sdist) with pip", package, version)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "-d", str(cache_dir), f"{package}=={version}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise UserError(
            f"pip could not download {package}=={version} ({tail[0]}); check access to PyPI, "
            "or use data.source: local with your own structures."
        )
    actual = sha256_of(path)
    if actual != sha256:
        path.unlink()
        raise UserError(
            f"{name} has sha256 {actual}, not the expected {sha256}; "
            "check data.snapshot.version and data.snapshot.sha256 in config/config.yaml."
        )
    return path


def read_dataset(archive: tarfile.TarFile, root: str, dataset: str) -> pd.DataFrame:
    """One CSV of the archive as a frame, with the header/row misalignment repaired."""
    member = archive.extractfile(f"{root}/matminer/datasets/{dataset}.csv")
    if member is None:
        raise UserError(f"{dataset}.csv is missing from the snapshot archive; check data.snapshot.")
    text = member.read().decode("utf-8")
    lines = text.split("\n", 2)  # '# ref: ...', header, data
    if not lines[0].startswith("#"):
        raise UserError(
            f"{dataset}.csv does not start with its '# ref:' line; check data.snapshot."
        )
    header = next(csv.reader([lines[1]]))
    frame = pd.read_csv(io.StringIO(lines[2]), header=None, dtype=str, keep_default_na=False)
    extra = frame.shape[1] - len(header)
    if extra < 0:
        raise UserError(f"{dataset}.csv has fewer columns than its header; check data.snapshot.")
    frame.columns = [f"_unnamed{i}" for i in range(extra)] + header
    log.info(
        "%s: %d rows, %d columns (+%d unnamed leading)", dataset, len(frame), len(header), extra
    )
    return frame


#: dataset -> (payload kind, column) of its structure; parsed later, in parallel.
STRUCTURE_COLUMN: dict[str, tuple[str, str]] = {
    "flla_2015": ("python_repr_dict", "structure"),
    "elastic_tensor": ("poscar", "poscar"),
    "dielectric_constant": ("poscar", "poscar"),
    "piezoelectric_tensor": ("poscar", "poscar"),
}


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def iter_records(archive_path: Path, label: str) -> Iterator[Record]:
    """Merged records of the four datasets (one per material id)."""
    merged: dict[str, dict[str, Any]] = {}
    with tarfile.open(archive_path, "r:gz") as archive:
        root = archive.getnames()[0].split("/")[0]
        for dataset in DATASETS:
            frame = read_dataset(archive, root, dataset)
            for _, row in frame.iterrows():
                mid = row["material_id"].strip()
                entry = merged.setdefault(mid, {"datasets": [], "properties": {}, "row": None})
                entry["datasets"].append(dataset)
                for ours, theirs in PROPERTY_MAP[dataset].items():
                    value = _float(row[theirs])
                    if not math.isnan(value):
                        entry["properties"][ours] = value
                if entry["row"] is None:
                    entry["row"] = (dataset, row.to_dict())
    for mid, entry in merged.items():
        dataset, row = entry["row"]
        kind, column = STRUCTURE_COLUMN[dataset]
        yield Record(
            material_id=mid,
            structure=(kind, row[column]),
            properties=entry["properties"],
            source=f"{label}:{'+'.join(entry['datasets'])}",
        )
    log.info("snapshot: %d materials after merging by material id", len(merged))


def load_snapshot(settings: dict[str, Any], cache_dir: Path) -> list[Record]:
    """Records of the ``snapshot`` source (``settings`` = the ``data.snapshot`` section)."""
    path = fetch_sdist(settings["package"], settings["version"], settings["sha256"], cache_dir)
    return list(iter_records(path, f"snapshot:{settings['package']}-{settings['version']}"))
