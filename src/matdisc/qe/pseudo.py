"""Pseudopotentials: read UPF headers, choose one file per element, derive cut-offs.

A file is chosen for an element either from the explicit element → file map of the
settings or by searching ``pseudo_dir``: every file whose UPF header names the element
and the configured functional, ranked by the preferred kinds (NC/US/PAW), then scalar-
before fully-relativistic, then files that suggest cut-offs, then by name. The element is
always taken from the header, never from the file name, so a file cannot stand in for
the wrong species.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from matdisc.errors import UserError

log = logging.getLogger(__name__)

#: Bytes read from the start of a file to find its header (headers come first).
_HEAD_BYTES = 65536
_ATTR = re.compile(r"""([A-Za-z_]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_V1_CUTOFFS = re.compile(r"^\s*(\S+)\s+(\S+)\s+Suggested cutoff for wfc and rho", re.MULTILINE)
_INFO_WFC = re.compile(r"Suggested minimum cutoff for wavefunctions:\s*([0-9.EeDd+-]+)\s*Ry")
_INFO_RHO = re.compile(r"Suggested minimum cutoff for charge density:\s*([0-9.EeDd+-]+)\s*Ry")


class PseudoError(UserError):
    """No usable pseudopotential for an element (the message names element and folder)."""


@dataclass(frozen=True)
class UpfHeader:
    """What the generator needs from a UPF file's header.

    kind: NC, US or PAW. functional: PBE, PBESOL, LDA, BLYP, TPSS or the raw header text.
    wfc_cutoff_ry / rho_cutoff_ry: the cut-offs the file suggests, None when it suggests none.
    """

    path: Path
    element: str
    kind: str
    functional: str
    fully_relativistic: bool
    wfc_cutoff_ry: float | None
    rho_cutoff_ry: float | None

    @property
    def name(self) -> str:
        return self.path.name


def classify_functional(text: str) -> str:
    """Short name of a UPF functional string (``" SLA  PW   PBX  PBC"`` → ``PBE``)."""
    tokens = set(text.upper().replace("-", " ").split())
    if "PBESOL" in tokens or {"PSX", "PSC"} <= tokens:
        return "PBESOL"
    if "PBE" in tokens or {"PBX", "PBC"} <= tokens:
        return "PBE"
    if "BLYP" in tokens or "LYP" in tokens:
        return "BLYP"
    if "TPSS" in tokens:
        return "TPSS"
    if "PZ" in tokens or "LDA" in tokens:
        return "LDA"
    return " ".join(text.split()) or "unknown"


def _number(text: str) -> float | None:
    """A positive cut-off from header text; 0 or unparsable means 'none suggested'."""
    try:
        value = float(text.replace("D", "E").replace("d", "e"))
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _kind(text: str) -> str | None:
    text = text.strip().upper()
    if text in ("NC", "SL"):  # SL = semilocal norm-conserving
        return "NC"
    if text in ("US", "USPP"):
        return "US"
    if text == "PAW":
        return "PAW"
    return None


def read_upf_header(path: Path | str) -> UpfHeader | None:
    """Parse the header of a UPF v1 or v2 file; None if the file is not UPF."""
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    start = head.find("<PP_HEADER")
    if start < 0 and path.stat().st_size > _HEAD_BYTES:  # a long PP_INFO comes first
        head = path.read_text(encoding="utf-8", errors="replace")
        start = head.find("<PP_HEADER")
    if start < 0:
        return None
    info_wfc = _INFO_WFC.search(head)
    info_rho = _INFO_RHO.search(head)
    tag_end = head.find(">", start)
    tag = head[start:tag_end]
    attrs = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _ATTR.finditer(tag)
    }
    if "element" in attrs:  # UPF v2: attributes of the PP_HEADER tag
        element = attrs["element"].strip()
        kind = _kind(attrs.get("pseudo_type", ""))
        if kind is None and attrs.get("is_paw", "").strip().upper() in ("T", "TRUE", ".TRUE."):
            kind = "PAW"
        functional = classify_functional(attrs.get("functional", ""))
        fully_rel = attrs.get("relativistic", "").strip().lower() == "full" or attrs.get(
            "has_so", ""
        ).strip().upper() in ("T", "TRUE", ".TRUE.")
        wfc = _number(attrs.get("wfc_cutoff", "0"))
        rho = _number(attrs.get("rho_cutoff", "0"))
    else:  # UPF v1: one value per line, described by the words after it
        end = head.find("</PP_HEADER>", start)
        if end < 0:
            return None
        lines = head[tag_end + 1 : end].splitlines()
        fields = {}
        for line in lines:
            lowered = line.lower()
            if "element" in lowered and "element" not in fields:
                fields["element"] = line.split()[0]
            elif ("pseudopotential" in lowered or "norm" in lowered) and "kind" not in fields:
                fields["kind"] = line.split()[0]
            elif "exchange-correlation" in lowered and "functional" not in fields:
                fields["functional"] = line[: lowered.index("exchange-correlation")]
        if "element" not in fields:
            return None
        element = fields["element"]
        kind = _kind(fields.get("kind", ""))
        functional = classify_functional(fields.get("functional", ""))
        # Spin-orbit data (PP_ADDINFO) of a v1 file follows the long numeric sections.
        fully_rel = "<PP_ADDINFO>" in path.read_text(encoding="utf-8", errors="replace")
        match = _V1_CUTOFFS.search(head)
        wfc = _number(match.group(1)) if match else None
        rho = _number(match.group(2)) if match else None
    if wfc is None and info_wfc:
        wfc = _number(info_wfc.group(1))
    if rho is None and info_rho:
        rho = _number(info_rho.group(1))
    if kind is None:
        return None
    element = element[:1].upper() + element[1:].lower()
    return UpfHeader(path, element, kind, functional, fully_rel, wfc, rho)


@dataclass(frozen=True)
class PseudoChoice:
    """The pseudopotentials chosen for one structure and the cut-offs they imply (Ry)."""

    headers: Mapping[str, UpfHeader]  # element -> header, in species order
    ecutwfc_ry: float
    ecutrho_ry: float


class PseudoLibrary:
    """The UPF files of one folder, indexed by element, plus an explicit element → file map."""

    def __init__(
        self,
        *,
        pseudo_dir: Path | str,
        functional: str,
        preference: Iterable[str],
        explicit: Mapping[str, str] | None = None,
    ) -> None:
        self.pseudo_dir = Path(pseudo_dir).expanduser().resolve()
        self.functional = functional.upper()
        self.preference = tuple(preference)
        if not self.pseudo_dir.is_dir():
            raise UserError(
                f"the pseudopotential folder {self.pseudo_dir} does not exist; set qe.pseudo_dir "
                f"to a folder of UPF files (Debian: apt-get install quantum-espresso-data)."
            )
        self._by_element: dict[str, list[UpfHeader]] = {}
        self._skipped: list[str] = []
        for path in sorted(self.pseudo_dir.iterdir()):
            if not path.is_file():
                continue
            header = read_upf_header(path)
            if header is None:
                self._skipped.append(path.name)
                continue
            self._by_element.setdefault(header.element, []).append(header)
        if self._skipped:
            log.debug("not UPF, ignored in %s: %s", self.pseudo_dir, ", ".join(self._skipped))
        self._explicit: dict[str, UpfHeader] = {}
        for element, name in (explicit or {}).items():
            self._explicit[element] = self._check_explicit(element, name)

    def _check_explicit(self, element: str, name: str) -> UpfHeader:
        path = self.pseudo_dir / name
        if not path.is_file():
            raise UserError(
                f"qe.pseudopotentials maps {element} to {name}, which is not a file in "
                f"{self.pseudo_dir}; correct the file name or qe.pseudo_dir."
            )
        header = read_upf_header(path)
        if header is None:
            raise UserError(
                f"qe.pseudopotentials maps {element} to {name}, which is not a UPF file; "
                f"map {element} to a .UPF file in {self.pseudo_dir}."
            )
        if header.element != element:
            raise UserError(
                f"qe.pseudopotentials maps {element} to {name}, but that file is a "
                f"{header.element} pseudopotential; map {element} to a {element} file."
            )
        if header.functional != self.functional:
            raise UserError(
                f"qe.pseudopotentials maps {element} to {name}, a {header.functional} "
                f"pseudopotential, but qe.functional is {self.functional}; map {element} to a "
                f"{self.functional} file or change qe.functional."
            )
        return header

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

    def choose(self, element: str) -> UpfHeader:
        """The pseudopotential for ``element``; :class:`PseudoError` naming it if none."""
        if element in self._explicit:
            return self._explicit[element]
        found = self.candidates(element)
        if found:
            return found[0]
        others = sorted(
            f"{h.name} ({h.functional} {h.kind})" for h in self._by_element.get(element, [])
        )
        detail = f"; files for {element} there: {', '.join(others)}" if others else ""
        raise PseudoError(
            f"no {self.functional} pseudopotential of kind {'/'.join(self.preference)} for "
            f"element {element} in {self.pseudo_dir}{detail}; add one there or map {element} "
            f"to a file in qe.pseudopotentials."
        )

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
        """Files for ``elements`` (species order kept) and the cut-offs to use with them.

        ecutwfc: the override, else the largest suggested cut-off (``fallback_wfc_ry`` for
        a file that suggests none), rounded up to a whole Ry. ecutrho: the override, else
        at least dual × ecutwfc (dual_nc when every file is NC, else dual_us_paw) and at
        least the largest suggested density cut-off.
        """
        headers = {element: self.choose(element) for element in elements}
        dual = dual_nc if all(h.kind == "NC" for h in headers.values()) else dual_us_paw
        if ecutwfc_ry is None:
            wfc = max(h.wfc_cutoff_ry or fallback_wfc_ry for h in headers.values())
            wfc = float(math.ceil(wfc - 1e-9))
            if ecutrho_ry is None:
                suggested = max((h.rho_cutoff_ry or 0.0) for h in headers.values())
                rho = float(math.ceil(max(dual * wfc, suggested) - 1e-9))
            else:
                rho = float(ecutrho_ry)
        else:
            wfc = float(ecutwfc_ry)
            rho = float(ecutrho_ry) if ecutrho_ry is not None else dual * wfc
        if rho < 4 * wfc:
            raise UserError(
                f"ecutrho {rho:g} Ry is below 4 x ecutwfc ({4 * wfc:g} Ry), which pw.x "
                f"rejects; raise qe.ecutrho_ry or leave it null."
            )
        return PseudoChoice(headers=headers, ecutwfc_ry=wfc, ecutrho_ry=rho)
