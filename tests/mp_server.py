"""A stand-in for the Materials Project API on 127.0.0.1, for the tests of the ``mp`` source.

It answers the requests ``mp_api.client.MPRester`` (mp-api 0.46) makes for our download:

- ``GET /heartbeat``: ``{"db_version", "version", "access_controlled_batch_ids"}``; MPRester
  reads it (with a bare ``requests.get``) at construction for the database and emmet versions.
- ``GET /materials/thermo/``: thermo documents (:func:`thermo_doc`), filtered by
  ``chemsys`` (a comma list of exact chemical systems) and ``thermo_types``, projected,
  sorted and paged as the summary is;
- ``GET /materials/summary/``: the summary documents, filtered by the query parameters the
  real API knows (``crystal_system``, ``nsites_min``/``nsites_max``, ``formula`` as a comma list
  of anonymous formulas, ``has_props``, ``deprecated``), projected with ``_fields``, sorted with
  ``_sort_fields`` and paged with ``_skip``/``_limit`` or ``_page``/``_per_page`` (1-based;
  takes precedence, as in emmet-api's ``PaginationQuery``). The answer is
  ``{"data": [...], "errors": [], "meta": {"total_doc", "max_limit", ...}}``. The API key must
  come in the ``x-api-key`` header (else 401); an unknown query parameter is a 400, so a
  misspelt query fails the tests instead of silently returning everything.

Faults (:class:`Fault`) make chosen requests answer 429/5xx or stall past the client's
time-out, and every request is recorded (:attr:`FakeMPServer.requests`) so tests can count
what reached the server.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pymatgen.core import Lattice, Structure

SUMMARY_PATH = "/materials/summary/"
THERMO_PATH = "/materials/thermo/"
MAX_LIMIT = 1000

_PAGINATION = {"_skip", "_limit", "_page", "_per_page"}
_FILTERS = {
    "crystal_system",
    "nsites_min",
    "nsites_max",
    "formula",
    "has_props",
    "deprecated",
    "batch_id_not_eq",
}
_PROJECTION = {"_fields", "_all_fields", "_sort_fields"}
_KNOWN = _PAGINATION | _FILTERS | _PROJECTION
_THERMO_KNOWN = _PAGINATION | _PROJECTION | {"chemsys", "thermo_types"}


@dataclass
class Fault:
    """Answer matching requests with ``status`` (after ``delay_s`` seconds) ``times`` times.

    ``path`` and ``offset`` (the first document index the request asks for; None = any)
    select the requests; ``times=-1`` never runs out. ``status=None`` with a delay answers
    normally but late, which a client with a shorter time-out sees as a time-out.
    """

    status: int | None = 500
    path: str = SUMMARY_PATH
    offset: int | None = None
    times: int = 1
    delay_s: float = 0.0
    retry_after: str | None = None
    user_agent: str | None = None  # only requests whose User-Agent starts with this

    def matches(self, path: str, offset: int | None, user_agent: str) -> bool:
        return (
            self.times != 0
            and path == self.path
            and (self.offset is None or self.offset == offset)
            and (self.user_agent is None or user_agent.startswith(self.user_agent))
        )


@dataclass(frozen=True)
class Request:
    """One request as the server saw it (after any fault), for assertions."""

    path: str
    params: dict[str, str]
    headers: dict[str, str]
    status: int
    offset: int | None
    time: float  # time.monotonic() when the request arrived


@dataclass
class FakeMPServer:
    """The fake API; use as a context manager (binds a free port on 127.0.0.1)."""

    docs: list[dict[str, Any]]
    api_key: str
    thermo_docs: list[dict[str, Any]] = field(default_factory=list)
    db_version: str = "2025.09.25"
    emmet_version: str = "0.87.3"
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FakeMPServer:
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- helpers for tests -----------------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def summary_requests(self) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == SUMMARY_PATH]

    # -- request handling (called from handler threads) ------------------------------------
    def _take_fault(self, path: str, offset: int | None, user_agent: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(path, offset, user_agent):
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


def _offset(params: dict[str, str]) -> int | None:
    """First document index a summary request asks for (emmet-api's pagination rules)."""
    try:
        if "_page" in params:
            page = int(params["_page"])
            per_page = int(params.get("_per_page", 100))
            return (page - 1) * per_page if page >= 1 else 0
        return int(params.get("_skip", 0))
    except ValueError:
        return None


def _flag(value: str) -> bool:
    return value.strip().lower() in {"true", "1", "yes"}


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeMPServer  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr logging
        return

    def do_GET(self) -> None:
        arrived = time.monotonic()
        state = self.server_state
        parts = urlsplit(self.path)
        path = parts.path
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        offset = _offset(params) if path in (SUMMARY_PATH, THERMO_PATH) else None
        headers = {k.lower(): v for k, v in self.headers.items()}

        fault = state._take_fault(path, offset, headers.get("user-agent", ""))
        if fault is not None and fault.status is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            status, body = fault.status, {"detail": f"injected fault {fault.status}"}
        elif path == "/heartbeat":
            extra, status = {}, 200
            body = {
                "status": "OK",
                "db_version": state.db_version,
                "version": state.emmet_version,
                "access_controlled_batch_ids": [],
            }
        elif path == SUMMARY_PATH:
            extra = {}
            status, body = self._query(state, state.docs, _KNOWN, _keep, params, headers)
        elif path == THERMO_PATH:
            extra = {}
            status, body = self._query(
                state, state.thermo_docs, _THERMO_KNOWN, _keep_thermo, params, headers
            )
        else:
            extra, status, body = {}, 404, {"detail": "Not Found"}

        # Recorded on arrival, so a test sees a stalled request even before it is answered.
        state._record(Request(path, params, headers, status, offset, arrived))
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out)
            pass

    @staticmethod
    def _query(
        state: FakeMPServer,
        all_docs: list[dict[str, Any]],
        known: set[str],
        keep: Any,
        params: dict[str, str],
        headers: dict[str, str],
    ) -> tuple[int, dict[str, Any]]:
        if headers.get("x-api-key") != state.api_key:
            return 401, {"detail": "Unauthorized: a valid API key is required."}
        unknown = sorted(set(params) - known)
        if unknown:
            return 400, {"detail": f"Unrecognized query parameter(s): {', '.join(unknown)}"}
        try:
            if "_page" in params:
                limit = int(params.get("_per_page", 100))
            else:
                limit = int(params.get("_limit", 100))
            skip = _offset(params)
        except ValueError:
            return 400, {"detail": "pagination parameters must be integers"}
        if skip is None or skip < 0 or limit < 0:
            return 400, {"detail": "Cannot request negative _skip or _limit values"}
        if limit > MAX_LIMIT:
            return 400, {"detail": f"The max limit is {MAX_LIMIT} entries"}

        docs = [d for d in all_docs if keep(d, params)]
        for key in reversed(params.get("_sort_fields", "").split(",")):
            key = key.strip()
            if key:
                name = key.lstrip("-")
                docs.sort(key=lambda d, n=name: str(d.get(n)), reverse=key.startswith("-"))
        page = docs[skip : skip + limit]
        if not _flag(params.get("_all_fields", "false")):
            wanted = [f for f in params.get("_fields", "material_id").split(",") if f]
            page = [{f: d.get(f) for f in wanted} for d in page]
        meta = {
            "api_version": "fake",
            "time_stamp": "2026-01-01T00:00:00",
            "total_doc": len(docs),
            "max_limit": MAX_LIMIT,
            "db_version": state.db_version,
        }
        return 200, {"data": page, "errors": [], "meta": meta}


def _keep(doc: dict[str, Any], params: dict[str, str]) -> bool:
    """Whether a document passes the filters of a summary query."""
    if "crystal_system" in params and (
        doc["symmetry"]["crystal_system"] != params["crystal_system"]
    ):
        return False
    if "nsites_min" in params and doc["nsites"] < int(params["nsites_min"]):
        return False
    if "nsites_max" in params and doc["nsites"] > int(params["nsites_max"]):
        return False
    if "formula" in params and doc["formula_anonymous"] not in params["formula"].split(","):
        return False
    if "has_props" in params:
        wanted = [p for p in params["has_props"].split(",") if p]
        if not all(doc["has_props"].get(p, False) for p in wanted):
            return False
    if "batch_id_not_eq" in params and doc["batch_id"] == params["batch_id_not_eq"]:
        return False
    deprecated = _flag(params.get("deprecated", "false"))  # the API hides deprecated ones
    return doc["deprecated"] == deprecated


def _keep_thermo(doc: dict[str, Any], params: dict[str, str]) -> bool:
    """Whether a thermo document passes the filters of a thermo query."""
    if "chemsys" in params and doc["chemsys"] not in params["chemsys"].split(","):
        return False
    return "thermo_types" not in params or doc["thermo_type"] in params["thermo_types"].split(",")


# -- documents ---------------------------------------------------------------------------------
def summary_doc(
    material_id: str,
    structure: Structure,
    *,
    crystal_system: str,
    e_form: float | None,
    energy: float | None,
    band_gap: float | None,
    k_vrh: float | None = None,
    g_vrh: float | None = None,
    poisson: float | None = None,
    e_total: float | None = None,
    n: float | None = None,
    deprecated: bool = False,
    batch_id: str = "mp_gga_gga+u",
) -> dict[str, Any]:
    """A summary document shaped like the API's (the fields our download reads and filters)."""
    comp = structure.composition
    has_elastic = k_vrh is not None and g_vrh is not None
    return {
        "material_id": material_id,
        "structure": structure.as_dict(),
        "nsites": len(structure),
        "formula_pretty": comp.reduced_formula,
        "formula_anonymous": comp.anonymized_formula,
        "symmetry": {"crystal_system": crystal_system},
        "formation_energy_per_atom": e_form,
        "energy_per_atom": energy,
        "band_gap": band_gap,
        "bulk_modulus": (
            {"voigt": k_vrh + 1, "reuss": k_vrh - 1, "vrh": k_vrh} if has_elastic else None
        ),
        "shear_modulus": (
            {"voigt": g_vrh + 1, "reuss": g_vrh - 1, "vrh": g_vrh} if has_elastic else None
        ),
        "homogeneous_poisson": poisson,
        "e_total": e_total,
        "n": n,
        "has_props": {"elasticity": has_elastic, "dielectric": e_total is not None},
        "deprecated": deprecated,
        "batch_id": batch_id,
    }


_ROCKSALT_PAIRS = [
    ("Na", "Cl"), ("K", "Cl"), ("Li", "F"), ("Mg", "O"), ("Ca", "O"), ("Sr", "O"),
    ("Ba", "O"), ("Na", "F"), ("K", "Br"), ("Rb", "I"), ("Li", "Cl"), ("Ni", "O"),
]  # fmt: skip
_PEROVSKITES = [("Sr", "Ti", "O"), ("Ba", "Ti", "O"), ("Ca", "Ti", "O"), ("K", "Nb", "O")]
_HEUSLERS = [("Cu", "Mn", "Al"), ("Co", "Mn", "Si"), ("Ni", "Mn", "Ga")]
_HALF_HEUSLERS = [("Ti", "Ni", "Sn"), ("Zr", "Ni", "Sn")]


def _fcc(a: float) -> Lattice:
    """Primitive lattice of a face-centred cubic cell of edge ``a`` (Å)."""
    return Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])


def make_docs() -> list[dict[str, Any]]:
    """A small, varied database: 21 cubic materials of the four classes plus non-cubic,
    too-large and deprecated ones that the VAE/UNet query must not return.

    Ids are ``mp-1001`` upwards; properties are simple functions of the index, some
    missing (None) so that NaN handling is exercised.
    """
    docs: list[dict[str, Any]] = []

    def add(structure: Structure, system: str, **kw: Any) -> None:
        i = len(docs)
        has_elastic = i % 3 == 0
        has_dielectric = i % 4 == 0
        k, g = 100.0 + i, 40.0 + i / 2
        props: dict[str, Any] = {
            "e_form": -1.0 - i / 100,
            "energy": -5.0 - i / 10,
            "band_gap": 0.0 if i % 5 == 0 else 1.0 + i / 10,
            "k_vrh": k if has_elastic else None,
            "g_vrh": g if has_elastic else None,
            # every 6th elastic material lacks the elasticity endpoint's Poisson ratio
            "poisson": (3 * k - 2 * g) / (6 * k + 2 * g) if has_elastic and i % 6 else None,
            "e_total": 5.0 + i / 10 if has_dielectric else None,
            "n": 1.5 + i / 100 if has_dielectric else None,
        }
        props.update(kw)
        docs.append(summary_doc(f"mp-{1001 + i}", structure, crystal_system=system, **props))

    # Primitive cells written out (Structure.from_spacegroup takes seconds per call).
    for j, (a, b) in enumerate(_ROCKSALT_PAIRS):
        add(Structure(_fcc(4.2 + j / 20), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]), "Cubic")
    for j, (a, b, x) in enumerate(_PEROVSKITES):
        add(
            Structure(
                Lattice.cubic(3.9 + j / 20),
                [a, b, x, x, x],
                [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
            ),
            "Cubic",
        )
    for j, (x, y, z) in enumerate(_HEUSLERS):  # X2YZ, L2_1
        coords = [[0.25, 0.25, 0.25], [0.75, 0.75, 0.75], [0, 0, 0], [0.5, 0.5, 0.5]]
        add(Structure(_fcc(5.8 + j / 20), [x, x, y, z], coords), "Cubic")
    for j, (x, y, z) in enumerate(_HALF_HEUSLERS):  # XYZ, C1_b
        coords = [[0, 0, 0], [0.25, 0.25, 0.25], [0.5, 0.5, 0.5]]
        add(Structure(_fcc(5.9 + j / 20), [x, y, z], coords), "Cubic")
    cubic_count = len(docs)

    # Not for the VAE/UNet set: hexagonal, tetragonal, a cubic cell above 40 sites, a
    # deprecated one, and (in no set) a GNoME one.
    wurtzite = Structure(
        Lattice.hexagonal(3.25, 5.2),
        ["Zn", "Zn", "O", "O"],
        [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.38], [2 / 3, 1 / 3, 0.88]],
    )
    add(wurtzite, "Hexagonal")
    rutile = Structure(
        Lattice.tetragonal(4.59, 2.96),
        ["Ti", "Ti", "O", "O", "O", "O"],
        [
            [0, 0, 0],
            [0.5, 0.5, 0.5],
            [0.3, 0.3, 0],
            [0.7, 0.7, 0],
            [0.8, 0.2, 0.5],
            [0.2, 0.8, 0.5],
        ],
    )
    add(rutile, "Tetragonal")
    na = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    cl = [[0.5, 0.5, 0.5], [0, 0, 0.5], [0, 0.5, 0], [0.5, 0, 0]]
    rocksalt = Structure(Lattice.cubic(4.2), ["Na"] * 4 + ["Cl"] * 4, [*na, *cl])
    add(rocksalt * (2, 2, 2), "Cubic")  # NaCl, 64 sites
    add(
        Structure(Lattice.cubic(2.82), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Cubic",
        deprecated=True,
    )
    add(
        Structure(Lattice.cubic(2.9), ["Cs", "Br"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Cubic",
        batch_id="gnome_r2scan_statics",
    )
    assert cubic_count == 21
    return docs


def thermo_doc(
    material_id: str, formula: str, energy_per_atom: float, *, thermo_type: str = "GGA_GGA+U"
) -> dict[str, Any]:
    """A thermo document shaped like the API's (the fields the hull reads and filters)."""
    from pymatgen.core import Composition

    comp = Composition(formula)
    return {
        "material_id": material_id,
        "thermo_id": f"{material_id}_{thermo_type}",
        "formula_pretty": comp.reduced_formula,
        "chemsys": "-".join(sorted(el.symbol for el in comp.elements)),
        "energy_per_atom": energy_per_atom,
        "energy_above_hull": 0.0,
        "thermo_type": thermo_type,
    }
