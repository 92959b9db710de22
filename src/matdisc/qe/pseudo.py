"""Pseudopotential families: one file per element, the cut-offs they imply, the files' state.

A family answers "which UPF file for this element" without needing the file:

- ``sssp-efficiency`` / ``sssp-precision`` (:class:`TableFamily`): the SSSP 1.3.0 PBE
  tables shipped with the package (file name, recommended cut-offs and md5 per element).
  Cut-offs are the largest recommended ones over the structure's elements, as SSSP is
  meant to be used.
- ``folder`` (:class:`FolderFamily`): the UPF files of ``qe.pseudo_dir``, searched by their
  headers (element and functional), ranked by ``qe.pseudo_preference`` (NC/US/PAW), then
  scalar- before fully-relativistic, then files that suggest cut-offs, then by name. Here
  the files must be on the machine that writes the inputs.
- an explicit element → file map (:class:`MapFamily`): files read for their headers where
  they are present in ``qe.pseudo_dir``, taken by name where not.

pw.x finds the files through ``$ESPRESSO_PSEUDO`` (the inputs name no folder), so writing
an input never needs them; :func:`check_files` says whether they are present here and
whether their md5 matches the family's table.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from matdisc.errors import UserError
from matdisc.qe.upf import UpfHeader, read_upf_header

log = logging.getLogger(__name__)

#: Shipped tables: family name → (CSV in matdisc/qe/sssp, label used in messages).
TABLE_FAMILIES: dict[str, tuple[str, str]] = {
    "sssp-efficiency": ("sssp_1.3.0_pbe_efficiency.csv", "SSSP 1.3.0 PBE efficiency"),
    "sssp-precision": ("sssp_1.3.0_pbe_precision.csv", "SSSP 1.3.0 PBE precision"),
}
FAMILY_NAMES: tuple[str, ...] = (*TABLE_FAMILIES, "folder")


class PseudoError(UserError):
    """No usable pseudopotential for an element (the message names element and family)."""


@dataclass(frozen=True)
class PseudoFile:
    """One element's pseudopotential as a family describes it.

    ecutwfc_ry / ecutrho_ry: recommended (table) or suggested (UPF header) cut-offs, None
    when unknown. md5: the file's checksum where the family publishes one. kind: NC, US or
    PAW where known (it sets the ecutrho/ecutwfc ratio when no density cut-off is known).
    """

    element: str
    filename: str
    ecutwfc_ry: float | None = None
    ecutrho_ry: float | None = None
    md5: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class PseudoChoice:
    """The files chosen for one structure (species order) and the cut-offs to use (Ry)."""

    files: Mapping[str, PseudoFile]
    ecutwfc_ry: float
    ecutrho_ry: float


@dataclass(frozen=True)
class FileCheck:
    """The state of a choice's files in one folder: present (all of them), md5_ok (None
    when the family publishes no checksums or a file is missing), and the names at fault."""

    folder: Path
    present: bool
    md5_ok: bool | None
    missing: tuple[str, ...]
    mismatched: tuple[str, ...]


class PseudoFamily:
    """Base class: ``file(element)`` plus the cut-off rule shared by every family."""

    name: str = ""
    label: str = ""

    def file(self, element: str) -> PseudoFile:
        raise NotImplementedError

    def choose_all(
        self,
        elements: Iterable[str],
        *,
        ecutwfc_ry: float | None,
        ecutrho_ry: float | None,
        fallback_wfc_ry: float,
        dual_nc: float,
        dual_us_paw: float,
    ) -> PseudoChoice:
        """Files for ``elements`` (order kept) and the cut-offs to use with them.

        ecutwfc: the override, else the largest known cut-off (``fallback_wfc_ry`` for a
        file without one), rounded up to a whole Ry. ecutrho: the override, else the
        largest density cut-off any file needs — its own where known, else its ratio
        (dual_nc for NC, dual_us_paw otherwise) times ecutwfc — and at least 4 x ecutwfc.
        With ecutwfc overridden, each file's known ratio ecutrho/ecutwfc is kept.
        """
        files = {element: self.file(element) for element in elements}

        def ratio(f: PseudoFile) -> float:
            if f.ecutwfc_ry and f.ecutrho_ry:
                return f.ecutrho_ry / f.ecutwfc_ry
            return dual_nc if f.kind == "NC" else dual_us_paw

        if ecutwfc_ry is None:
            wfc = max(f.ecutwfc_ry or fallback_wfc_ry for f in files.values())
            wfc = float(math.ceil(wfc - 1e-9))
            rho_each = [f.ecutrho_ry or ratio(f) * wfc for f in files.values()]
        else:
            wfc = float(ecutwfc_ry)
            rho_each = [ratio(f) * wfc for f in files.values()]
        if ecutrho_ry is None:
            rho = float(math.ceil(max(*rho_each, 4 * wfc) - 1e-9))
        else:
            rho = float(ecutrho_ry)
        if rho < 4 * wfc:
            raise UserError(
                f"ecutrho {rho:g} Ry is below 4 x ecutwfc ({4 * wfc:g} Ry), which pw.x "
                f"rejects; raise qe.ecutrho_ry or leave it null."
            )
        return PseudoChoice(files=files, ecutwfc_ry=wfc, ecutrho_ry=rho)


class TableFamily(PseudoFamily):
    """A published family shipped as a table (SSSP 1.3.0): nothing on disk is needed."""

    def __init__(self, name: str) -> None:
        if name not in TABLE_FAMILIES:
            raise UserError(
                f"qe.pseudo_family {name!r} is not known; use one of {', '.join(FAMILY_NAMES)} "
                f"or a mapping of element to UPF file name."
            )
        self.name = name
        table, self.label = TABLE_FAMILIES[name]
        self._files = _read_table(table)

    def file(self, element: str) -> PseudoFile:
        try:
            return self._files[element]
        except KeyError:
            raise PseudoError(
                f"element {element} is not in the {self.label} family; choose another "
                f"qe.pseudo_family or map {element} to a file."
            ) from None


@cache
def _read_table(name: str) -> dict[str, PseudoFile]:
    text = (resources.files("matdisc.qe") / "sssp" / name).read_text(encoding="utf-8")
    return {
        row["element"]: PseudoFile(
            element=row["element"],
            filename=row["filename"],
            ecutwfc_ry=float(row["ecutwfc_ry"]),
            ecutrho_ry=float(row["ecutrho_ry"]),
            md5=row["md5"].lower(),
        )
        for row in csv.DictReader(text.splitlines())
    }


class FolderFamily(PseudoFamily):
    """The UPF files of one folder, searched by their headers."""

    name = "folder"

    def __init__(
        self, *, pseudo_dir: Path | str | None, functional: str, preference: Iterable[str]
    ) -> None:
        if pseudo_dir is None:
            raise UserError(
                "qe.pseudo_family folder searches qe.pseudo_dir, which is not set; set it to a "
                "folder of UPF files or use qe.pseudo_family: sssp-efficiency."
            )
        self.pseudo_dir = Path(pseudo_dir).expanduser().resolve()
        self.label = f"UPF files of {self.pseudo_dir}"
        self.functional = functional.upper()
        self.preference = tuple(preference)
        if not self.pseudo_dir.is_dir():
            raise UserError(
                f"the pseudopotential folder {self.pseudo_dir} does not exist; set qe.pseudo_dir "
                f"to a folder of UPF files or use qe.pseudo_family: sssp-efficiency."
            )
        self._by_element: dict[str, list[UpfHeader]] = {}
        skipped: list[str] = []
        for path in sorted(self.pseudo_dir.iterdir()):
            if not path.is_file():
                continue
            header = read_upf_header(path)
            if header is None:
                skipped.append(path.name)
                continue
            self._by_element.setdefault(header.element, []).append(header)
        if skipped:
            log.debug("not UPF, ignored in %s: %s", self.pseudo_dir, ", ".join(skipped))

    def candidates(self, element: str) -> list[UpfHeader]:
        """Every usable file for ``element``, best first."""
        usable = [
            h
            for h in self._by_element.get(element, [])
            if h.functional == self.functional and h.kind in self.preference
        ]
        return sorted(
            usable,
            key=lambda h: (
                self.preference.index(h.kind),
                h.fully_relativistic,
                h.wfc_cutoff_ry is None,
                h.name,
            ),
        )

    def file(self, element: str) -> PseudoFile:
        found = self.candidates(element)
        if found:
            return _from_header(found[0])
        others = sorted(
            f"{h.name} ({h.functional} {h.kind})" for h in self._by_element.get(element, [])
        )
        detail = f"; files for {element} there: {', '.join(others)}" if others else ""
        raise PseudoError(
            f"no {self.functional} pseudopotential of kind {'/'.join(self.preference)} for "
            f"element {element} in {self.pseudo_dir}{detail}; add one there or map {element} "
            f"to a file in qe.pseudo_family."
        )


class MapFamily(PseudoFamily):
    """An explicit element → file name map; files present in ``pseudo_dir`` are checked."""

    name = "map"
    label = "qe.pseudo_family map"

    def __init__(
        self, mapping: Mapping[str, str], *, pseudo_dir: Path | None, functional: str
    ) -> None:
        self._files: dict[str, PseudoFile] = {}
        folder = local_pseudo_dir(pseudo_dir)
        for element, name in mapping.items():
            path = folder / name
            if not path.is_file():
                log.info("%s for %s is not in %s: taken by name", name, element, folder)
                self._files[element] = PseudoFile(element=element, filename=name)
                continue
            header = read_upf_header(path)
            if header is None:
                raise UserError(
                    f"qe.pseudo_family maps {element} to {name}, which is not a UPF file; "
                    f"map {element} to a .UPF file in {folder}."
                )
            if header.element != element:
                raise UserError(
                    f"qe.pseudo_family maps {element} to {name}, but that file is a "
                    f"{header.element} pseudopotential; map {element} to a {element} file."
                )
            if header.functional != functional.upper():
                raise UserError(
                    f"qe.pseudo_family maps {element} to {name}, a {header.functional} "
                    f"pseudopotential, but qe.functional is {functional.upper()}; map "
                    f"{element} to a {functional.upper()} file or change qe.functional."
                )
            self._files[element] = _from_header(header)

    def file(self, element: str) -> PseudoFile:
        try:
            return self._files[element]
        except KeyError:
            raise PseudoError(
                f"element {element} is not in the qe.pseudo_family map; add a file for it."
            ) from None


def _from_header(header: UpfHeader) -> PseudoFile:
    return PseudoFile(
        element=header.element,
        filename=header.name,
        ecutwfc_ry=header.wfc_cutoff_ry,
        ecutrho_ry=header.rho_cutoff_ry,
        kind=header.kind,
    )


def make_family(
    family: str | Mapping[str, str],
    *,
    pseudo_dir: Path | None,
    functional: str,
    preference: Iterable[str],
) -> PseudoFamily:
    """The family named by ``qe.pseudo_family`` (a name or an element → file map)."""
    if isinstance(family, Mapping):
        return MapFamily(family, pseudo_dir=pseudo_dir, functional=functional)
    if family == "folder":
        return FolderFamily(pseudo_dir=pseudo_dir, functional=functional, preference=preference)
    if family in TABLE_FAMILIES and functional.upper() != "PBE":
        raise UserError(
            f"qe.pseudo_family {family} is a PBE family but qe.functional is {functional}; "
            f"set qe.functional: PBE or use qe.pseudo_family: folder."
        )
    return TableFamily(family)


def local_pseudo_dir(pseudo_dir: Path | str | None) -> Path:
    """Where pw.x looks on this machine: ``qe.pseudo_dir``, else ``$ESPRESSO_PSEUDO``, else
    pw.x's own default ``~/espresso/pseudo``."""
    if pseudo_dir is not None:
        return Path(pseudo_dir).expanduser()
    env = os.environ.get("ESPRESSO_PSEUDO")
    return Path(env).expanduser() if env else Path.home() / "espresso" / "pseudo"


def file_md5(path: Path) -> str:
    """The md5 of a file, computed once per path, size and modification time."""
    stat = path.stat()
    return _md5(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@cache
def _md5(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(files: Iterable[PseudoFile], folder: Path) -> FileCheck:
    """Are ``files`` in ``folder``, and do their md5 sums match the family's?"""
    files = list(files)
    missing = tuple(f.filename for f in files if not (folder / f.filename).is_file())
    with_md5 = [f for f in files if f.md5 and f.filename not in missing]
    mismatched = tuple(f.filename for f in with_md5 if file_md5(folder / f.filename) != f.md5)
    known = not missing and len(with_md5) == len(files)
    return FileCheck(
        folder=folder,
        present=not missing,
        md5_ok=(not mismatched) if known else None,
        missing=missing,
        mismatched=mismatched,
    )


def require_files(files: Iterable[PseudoFile], folder: Path, family: PseudoFamily) -> None:
    """Stop with one sentence when a file is missing from ``folder`` or has the wrong md5."""
    check = check_files(files, folder)
    if check.missing:
        raise UserError(
            f"pw.x needs the {family.label} files {', '.join(check.missing)}, which are not in "
            f"{folder}; unpack the family there (README: Quantum ESPRESSO) or set qe.pseudo_dir."
        )
    if check.mismatched:
        raise UserError(
            f"the files {', '.join(check.mismatched)} in {folder} do not have the md5 that the "
            f"{family.label} table gives; replace them with the family's own files."
        )
