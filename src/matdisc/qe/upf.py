"""UPF pseudopotential headers: element, kind, functional and suggested cut-offs.

The element is always taken from the header, never from the file name, so a file cannot
stand in for the wrong species.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

#: Bytes read from the start of a file to find its header (headers come first).
_HEAD_BYTES = 65536
_ATTR = re.compile(r"""([A-Za-z_]+)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_V1_CUTOFFS = re.compile(r"^\s*(\S+)\s+(\S+)\s+Suggested cutoff for wfc and rho", re.MULTILINE)
_INFO_WFC = re.compile(r"Suggested minimum cutoff for wavefunctions:\s*([0-9.EeDd+-]+)\s*Ry")
_INFO_RHO = re.compile(r"Suggested minimum cutoff for charge density:\s*([0-9.EeDd+-]+)\s*Ry")


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
