"""The wheel carries the package data: an installed matdisc runs outside the checkout.

The schema, the voxel radius table, the CGCNN element features and the SSSP tables are
package data read through importlib.resources; this builds the wheel, installs it into a
folder of its own and runs matdisc from there, in a working directory outside the checkout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from tiny_cases import structures_row

from matdisc.io import write_table

pytestmark = pytest.mark.slow  # builds and installs the wheel

REPO = Path(__file__).resolve().parents[1]

#: Package data the installed package must carry (paths inside the wheel).
DATA_FILES = (
    "matdisc/schema.yaml",
    "matdisc/resources/ionic_radii.csv",
    "matdisc/resources/element_features.json",
    "matdisc/qe/sssp/sssp_1.3.0_pbe_efficiency.csv",
    "matdisc/qe/sssp/sssp_1.3.0_pbe_precision.csv",
)

#: Run by the installed package: where each piece of package data is loaded from.
PROBE = """
import json, sys
from importlib import resources
import matdisc
from matdisc.config import DEFAULT_SCHEMA, validate_config
from matdisc.graphs import ELEMENT_FEATURES_PATH, element_feature_table
from matdisc.qe.pseudo import TableFamily
from matdisc.voxel.radii import DEFAULT_TABLE, radius_lookup

settings = validate_config({})
json.dump(
    {
        "matdisc": matdisc.__file__,
        "files": str(resources.files("matdisc")),
        "qe_files": str(resources.files("matdisc.qe")),
        "schema": str(DEFAULT_SCHEMA),
        "radii": str(DEFAULT_TABLE),
        "features": str(ELEMENT_FEATURES_PATH),
        "radius_na": float(radius_lookup()[11]),
        "features_shape": list(element_feature_table().shape),
        "sssp": {
            name: TableFamily(name).file("Si").filename
            for name in ("sssp-efficiency", "sssp-precision")
        },
        "settings": {"voxel": settings["voxel"], "dask": settings["dask"]},
    },
    sys.stdout,
)
"""


def _copy_sources(target: Path) -> Path:
    """The checkout without its run outputs and caches, so the build leaves it untouched."""
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        "results",
        "logs",
        ".snakemake",
        "build",
        "dist",
        "*.egg-info",
        "__pycache__",
        ".pytest_cache",
        ".ruff_cache",
    )
    return Path(shutil.copytree(REPO, target, symlinks=True, ignore=ignore))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, site): the wheel built from this checkout, installed into ``site`` alone."""
    for module in ("setuptools", "wheel"):
        assert importlib.util.find_spec(module), (
            f"{module} is missing from the test environment; run pip install -e '.[test]'"
        )
    root = tmp_path_factory.mktemp("wheel")
    sources = _copy_sources(root / "sources")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root, sources],
        check=True,
        capture_output=True,
        env=env,
    )
    (wheel,) = root.glob("matdisc-*.whl")
    site = root / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", site, wheel],
        check=True,
        capture_output=True,
        env=env,
    )
    return wheel, site


def _run(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in ``cwd`` with the installed package first on the path."""
    path = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _row(mid: str, structure: Structure, split: str, e_form: float) -> dict:
    return structures_row(
        mid, structure, system="cubic", spacegroup=221, split=split, e_form=e_form
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheel_contains_the_package_data(installed: tuple[Path, Path]) -> None:
    wheel, site = installed
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [name for name in DATA_FILES if name not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    for name in DATA_FILES:
        assert (site / name).is_file(), name
    # The installed schema is the one the workflow reads through config/schema.yaml.
    assert (REPO / "config" / "schema.yaml").resolve() == REPO / "src" / "matdisc" / "schema.yaml"
    assert (site / "matdisc/schema.yaml").read_bytes() == (
        REPO / "config" / "schema.yaml"
    ).read_bytes()


def test_installed_package_runs_a_stage_outside_the_checkout(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, site = installed
    probe = _run(["-c", PROBE], site, tmp_path)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    package = (site / "matdisc").resolve()
    for key in ("matdisc", "files", "qe_files", "schema", "radii", "features"):
        where = Path(found[key]).resolve()
        assert where.is_relative_to(package), f"{key} loaded from {where}, not from {package}"
        assert not where.is_relative_to(REPO), f"{key} loaded from the checkout: {where}"
    assert Path(found["schema"]) == site / "matdisc" / "schema.yaml"
    assert Path(found["radii"]) == site / "matdisc" / "resources" / "ionic_radii.csv"
    assert Path(found["features"]) == site / "matdisc" / "resources" / "element_features.json"
    assert found["radius_na"] > 0 and found["features_shape"][0] > 100
    assert all(name.lower().startswith("si") for name in found["sssp"].values()), found["sssp"]

    structures = tmp_path / "structures.parquet"
    rows = [
        _row(
            "mp-1",
            Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5] * 3]),
            "train",
            -2.2,
        ),
        _row(
            "mp-2",
            Structure(
                Lattice.cubic(3.905),
                ["Sr", "Ti", "O", "O", "O"],
                [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            ),
            "val",
            -3.4,
        ),
    ]
    write_table(pd.DataFrame(rows), structures, "structures")
    voxels = tmp_path / "voxels" / "cubic.zarr"
    settings = found["settings"]
    settings["voxel"]["grid_size"] = 16
    stage = _run(
        [
            "-m",
            "matdisc",
            "voxelize-structures",
            "--settings",
            json.dumps(settings),
            "--input",
            f"structures={structures}",
            "--output",
            f"voxels={voxels}",
        ],
        site,
        tmp_path,
    )
    assert stage.returncode == 0, stage.stderr
    attrs = json.loads((voxels / "zarr.json").read_text())["attributes"]
    assert attrs["radius_table"] == "ionic_radii.csv"
    assert attrs["radius_table_sha256"] == _sha256(
        site / "matdisc" / "resources" / "ionic_radii.csv"
    )
    assert attrs["skipped"] == {} and attrs["grid_size"] == 16
