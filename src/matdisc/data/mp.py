"""The ``mp`` source of the ``download-structures`` stage: the live Materials Project API
through mp-api.

Two sets of materials are fetched from the summary endpoint and merged by material id:

- the VAE/UNet set (seed 000, Court et al. 2020): cubic, non-deprecated materials of at most
  ``max_sites`` sites whose anonymous formula is one of the seed's classes — binaries
  ``AB``, perovskites ``ABX3`` (``ABC3``), Heuslers ``X2YZ`` (``ABC2``) and half-Heuslers
  ``XYZ`` (``ABC``);
- the general set for the property models: up to ``general_limit`` non-deprecated materials,
  taken first from those with elastic constants, then from those with dielectric data, then
  from all others, so that the six sparse labels are as well covered as the limit allows.

Every set is read page by page (``_skip``/``_limit``, sorted by material id so that a page
always holds the same documents) through ``MPRester``; each raw page is written atomically
to ``cache_dir`` before it is used, so a download interrupted at any point resumes with the
pages it has not got yet. The cache is keyed by endpoint, database version, query and page
size: a new Materials Project release starts a fresh cache instead of mixing versions.

Requests go through a ``requests`` session of our own, handed to ``MPRester``, whose
``urllib3`` retry policy retries HTTP 429 and every 5xx ``retries`` times, waiting
``backoff_s``, 2·``backoff_s``, 4·``backoff_s`` … (or the server's ``Retry-After``); a failed
connection only once and a time-out at most twice. mp-api's own session would retry only
429/502/504, at most 3 times. The first contact (``/heartbeat``) retries neither: a refused
endpoint fails at once and one that never answers after one ``timeout_s``.

The API key comes from the ``api_key`` argument or ``MP_API_KEY``; it travels only in the
``x-api-key`` header and is never logged, cached or put in an error message.

Property mapping (summary field → column, units as in the column names):
formation_energy_per_atom → e_form_ev_per_atom, energy_per_atom → energy_ev_per_atom,
band_gap → band_gap_ev, bulk_modulus["vrh"] → k_vrh_gpa, shear_modulus["vrh"] → g_vrh_gpa,
homogeneous_poisson → poisson_ratio, n → refractive_index, e_total → dielectric_total.
The Poisson ratio is the elasticity endpoint's ``homogeneous_poisson`` (copied into the
summary); where a material has K_VRH and G_VRH but no such value it is computed from them as
(3K − 2G) / (6K + 2G), the same formula the Materials Project uses.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from tqdm.auto import tqdm
from urllib3.util.retry import Retry

from matdisc.errors import UserError
from matdisc.io import atomic_write_text
from matdisc.io.schemas import PROPERTY_COLUMNS

if TYPE_CHECKING:
    from pymatgen.core import Structure

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.materialsproject.org/"
API_KEY_ENV = "MP_API_KEY"
API_KEY_LENGTH = 32  # mp-api rejects keys of any other length

MISSING_KEY_MESSAGE = (
    "data.source is 'mp' but no Materials Project API key is set: export "
    "MP_API_KEY=<your 32-character key from https://materialsproject.org/api>, or set "
    "data.source: snapshot in config/config.yaml to use the embedded offline data."
)

#: Anonymous formulas (pymatgen's ``anonymized_formula``: letters by increasing amount) of the
#: seed's structure classes, which make up the VAE/UNet set.
VAE_FORMULAS: dict[str, str] = {
    "AB": "binary_AB",
    "ABC3": "perovskite_ABX3",
    "ABC2": "heusler_X2YZ",
    "ABC": "half_heusler_XYZ",
}

#: Summary fields requested; everything the records and the eight properties need.
SUMMARY_FIELDS: tuple[str, ...] = (
    "material_id",
    "structure",
    "formation_energy_per_atom",
    "energy_per_atom",
    "band_gap",
    "bulk_modulus",
    "shear_modulus",
    "homogeneous_poisson",
    "n",
    "e_total",
)

SORT_FIELD = "material_id"  # a stable order makes page k the same documents on every run
RETRY_STATUSES = frozenset([429, *range(500, 600)])
CONNECT_RETRIES = 1  # retries of a connection that failed (refused, DNS)
READ_RETRIES = 2  # retries of a request the server did not answer within timeout_s
MAX_BACKOFF_S = 120.0


@dataclass(frozen=True)
class Query:
    """One summary query: the API's own parameter names (not mp-api's aliases)."""

    name: str
    criteria: Mapping[str, str | int | bool]


#: In every query: current materials, without the GNoME r2SCAN batch (mp-api's
#: ``include_gnome=False``), i.e. the Materials Project's own GGA(+U) materials.
COMMON_CRITERIA: dict[str, str | bool] = {
    "deprecated": False,
    "batch_id_not_eq": "gnome_r2scan_statics",
}


def vae_query(max_sites: int) -> Query:
    """Cubic binaries, perovskites, (half-)Heuslers of at most ``max_sites`` sites."""
    return Query(
        "vae-cubic",
        {
            "crystal_system": "Cubic",
            "nsites_max": int(max_sites),
            "formula": ",".join(VAE_FORMULAS),
            **COMMON_CRITERIA,
        },
    )


GENERAL_QUERIES: tuple[Query, ...] = (
    Query("general-elasticity", {"has_props": "elasticity", **COMMON_CRITERIA}),
    Query("general-dielectric", {"has_props": "dielectric", **COMMON_CRITERIA}),
    Query("general-all", dict(COMMON_CRITERIA)),
)


# -- the API key ---------------------------------------------------------------------------------
def resolve_api_key(api_key: str | None = None) -> str:
    """The key from the argument or ``MP_API_KEY``; a :class:`UserError` if there is none.

    Only ``MP_API_KEY`` is read (not pymatgen's ``PMG_MAPI_KEY`` setting), so which key is
    used is visible in the environment of the run.
    """
    key = (api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")).strip()
    if not key:
        raise UserError(MISSING_KEY_MESSAGE)
    if len(key) != API_KEY_LENGTH:
        raise UserError(
            f"The Materials Project API key in {API_KEY_ENV} is not {API_KEY_LENGTH} "
            f"characters long as Materials Project keys are; copy it again from "
            f"https://materialsproject.org/api, or set data.source: snapshot in "
            f"config/config.yaml."
        )
    return key


# -- HTTP session with our retry policy ----------------------------------------------------------
class _DoublingBackoff(Retry):
    """urllib3 retries whose n-th retry waits ``backoff_factor * 2**(n-1)`` seconds.

    (urllib3's own schedule does not wait at all before the first retry.) A server's
    ``Retry-After`` still takes precedence, as in the base class.
    """

    def get_backoff_time(self) -> float:
        attempts = len(self.history)
        if attempts == 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff_factor * 2 ** (attempts - 1)))


def make_session(
    api_key: str,
    *,
    retries: int,
    backoff_s: float,
    connect_retries: int = CONNECT_RETRIES,
    read_retries: int = READ_RETRIES,
) -> requests.Session:
    """A session sending the key in ``x-api-key`` and retrying 429/5xx ``retries`` times, a
    failed connection ``connect_retries`` and a time-out ``read_retries`` times (at most
    ``retries`` each)."""
    from mp_api.client.core.client import __version__ as mp_api_version

    from matdisc import __version__ as matdisc_version

    retry = _DoublingBackoff(
        total=retries,
        # A refused connection (a wrong endpoint, no network) seldom heals in a minute, and a
        # server that does not answer costs timeout_s per try: retry those once or twice;
        # 429/5xx (a busy, live API) get every retry.
        connect=min(retries, connect_retries),
        read=min(retries, read_retries),
        status=retries,
        allowed_methods=frozenset(["GET"]),
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_s,
        backoff_max=MAX_BACKOFF_S,
        respect_retry_after_header=True,
        raise_on_status=False,  # the last 429/5xx reaches mp-api, whose error names it
    )
    adapter = HTTPAdapter(max_retries=retry)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["x-api-key"] = api_key
    session.headers["user-agent"] = f"matdisc/{matdisc_version} mp-api/{mp_api_version}"
    return session


def _timed_out(exc: requests.RequestException) -> bool:
    """Whether ``exc`` is a time-out (no answer, not a refusal); urllib3 wraps one that used
    up its retries in a MaxRetryError, which requests raises as a ConnectionError, and
    counts a refused connection (NewConnectionError) as a connect time-out."""
    from urllib3.exceptions import MaxRetryError, NewConnectionError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    if isinstance(exc, requests.Timeout):
        return True
    wrapped = exc.args[0] if exc.args else None
    reason = wrapped.reason if isinstance(wrapped, MaxRetryError) else None
    return isinstance(reason, Urllib3Timeout) and not isinstance(reason, NewConnectionError)


def _db_version(session: requests.Session, endpoint: str, timeout_s: float) -> str:
    """The database version from ``{endpoint}heartbeat`` (read with retries)."""
    url = endpoint + "heartbeat"
    try:
        response = session.get(url, timeout=timeout_s)
        if response.status_code != 200:
            raise UserError(
                f"The Materials Project API at {endpoint} answered HTTP "
                f"{response.status_code} to {url} even after retrying; try again later, fix "
                f"data.mp.endpoint, or set data.source: snapshot in config/config.yaml."
            )
        db_version = str(response.json()["db_version"])
    except requests.RequestException as exc:
        if not _timed_out(exc):
            raise UserError(
                f"The Materials Project API at {endpoint} could not be reached "
                f"({type(exc).__name__}); check the network and data.mp.endpoint, or set "
                f"data.source: snapshot in config/config.yaml."
            ) from exc
        raise UserError(
            f"The Materials Project API at {endpoint} did not answer within {timeout_s:g} s; "
            f"check data.mp.endpoint, raise data.mp.timeout_s, or set data.source: snapshot "
            f"in config/config.yaml."
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{url} did not answer like the Materials Project API (no db_version); fix "
            f"data.mp.endpoint, or set data.source: snapshot in config/config.yaml."
        ) from exc
    return db_version


def _open_rester(
    api_key: str, endpoint: str, session: requests.Session, *, retries: int, backoff_s: float
) -> Any:
    """``MPRester`` on our session.

    Its constructor reads ``/heartbeat`` with a bare ``requests.get`` (no retries); we have
    just read it with retries, so a failure here is a passing fault: retry the construction.
    """
    from mp_api.client import MPRester

    for attempt in range(retries + 1):
        try:
            return MPRester(
                api_key=api_key,
                endpoint=endpoint,
                session=session,
                use_document_model=False,  # raw JSON: what we cache, and no pydantic cost
                mute_progress_bars=True,  # we draw our own bar over pages
                notify_db_version=False,  # would write ~/.mprester.log.yaml
            )
        except (requests.RequestException, ValueError, KeyError) as exc:
            if attempt == retries:
                raise UserError(
                    f"Could not start the Materials Project client for {endpoint} "
                    f"({type(exc).__name__}) after {retries} retries; try again later, or "
                    f"set data.source: snapshot in config/config.yaml."
                ) from exc
            delay = min(MAX_BACKOFF_S, backoff_s * 2**attempt)
            log.warning("MPRester start failed (%s); retrying in %.1f s", type(exc).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# -- the page cache ------------------------------------------------------------------------------
class PageCache:
    """Raw API pages of one query on disk: ``<root>/<query>-<digest>/page-00000.json``.

    ``digest`` hashes everything that decides what a page holds (endpoint, database
    version, query, fields, order, page size) and nothing secret.
    """

    def __init__(self, root: Path, identity: Mapping[str, Any]) -> None:
        text = json.dumps(identity, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        self.dir = Path(root) / f"{identity['query']}-{digest}"
        self.identity = dict(identity)

    def path(self, page: int) -> Path:
        return self.dir / f"page-{page:05d}.json"

    def load(self, page: int) -> dict[str, Any] | None:
        path = self.path(page)
        if not path.is_file():
            return None
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(payload.get("data"), list) or "total_doc" not in payload:
                raise ValueError("not a cached page")
        except (ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable cached page %s (%s); fetching it again", path, exc)
            return None
        return payload

    def save(self, page: int, payload: Mapping[str, Any]) -> None:
        if not (self.dir / "query.json").is_file():
            atomic_write_text(self.dir / "query.json", json.dumps(self.identity, indent=2))
        atomic_write_text(self.path(page), json.dumps(payload))


# -- fetching ------------------------------------------------------------------------------------
_STATUS = re.compile(r"status code (\d{3})")


def _request_failed(
    exc: Exception, query: Query, page: int, settings: Mapping[str, Any]
) -> UserError:
    """One sentence for a page that failed for good (after the session's retries)."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = _STATUS.search(first_line)
    if match and match.group(1) in {"401", "403"}:
        return UserError(
            f"The Materials Project API rejected the key in {API_KEY_ENV} "
            f"(HTTP {match.group(1)}); check it at https://materialsproject.org/api, or set "
            f"data.source: snapshot in config/config.yaml."
        )
    if match:
        reason = f"HTTP {match.group(1)}"
    elif "timed out" in first_line.lower():
        reason = f"no answer within {settings['timeout_s']} s"
    else:  # e.g. "Max retries exceeded with url: ..." after refused connections
        reason = "no connection"
    return UserError(
        f"Materials Project query '{query.name}' failed at page {page + 1} ({reason}) after "
        f"{settings['retries']} retries; the pages already fetched are cached, so running "
        f"the download again resumes from there (or set data.source: snapshot in "
        f"config/config.yaml)."
    )


def _fetch_page(
    resource: Any,
    query: Query,
    page: int,
    settings: Mapping[str, Any],
    fields: tuple[str, ...] = SUMMARY_FIELDS,
) -> dict[str, Any]:
    """One page of ``query`` from an endpoint's rester (summary, thermo):
    ``{"skip", "limit", "total_doc", "data"}``."""
    from mp_api.client import MPRestError

    page_size = int(settings["page_size"])
    criteria = {
        **query.criteria,
        "_skip": page * page_size,
        "_limit": page_size,
        "_sort_fields": SORT_FIELD,
        # As _fields rather than fields=: mp-api checks fields= against the document
        # model's JSON schema, rebuilt per field per request (~0.3 s each);
        # check_fields does that check once.
        "_fields": ",".join(fields),
    }
    try:
        # _query_resource is the one-request primitive behind the resters' search; unlike
        # search it takes _skip/_limit (which both of the API's pagination schemes accept)
        # and returns meta.total_doc, which sizes the progress bar and the resume.
        result = resource._query_resource(
            criteria=criteria,
            num_chunks=1,
            chunk_size=page_size,
            use_document_model=False,
            timeout=settings["timeout_s"],
        )
    except (MPRestError, requests.RequestException) as exc:
        raise _request_failed(exc, query, page, settings) from exc
    meta = result.get("meta") or {}
    if "total_doc" not in meta:
        raise UserError(
            f"The Materials Project API answered query '{query.name}' without meta.total_doc; "
            f"check data.mp.endpoint, or set data.source: snapshot in config/config.yaml."
        )
    return {
        "skip": page * page_size,
        "limit": page_size,
        "total_doc": int(meta["total_doc"]),
        "data": list(result.get("data") or []),
    }


def check_fields(resource: Any, fields: tuple[str, ...]) -> None:
    """Fail early (a bug, not a user error) if mp-api's document model of ``resource``
    lacks a field we read."""
    known = set(resource.document_model.model_fields)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise RuntimeError(f"mp-api's {resource.suffix} documents have no field(s) {unknown}")


def fetch_query(
    query: Query,
    *,
    get_page: Callable[[int], dict[str, Any]],
    cache: PageCache,
    page_size: int,
    limit: int | None = None,
    enough: Callable[[list[dict[str, Any]]], bool] | None = None,
) -> list[dict[str, Any]]:
    """All documents of ``query`` (at most ``limit``), page by page, cached pages first.

    ``get_page(k)`` requests page ``k`` (0-based) from the API; a page is saved before the
    next is requested, so an interruption loses at most the page in flight. ``enough(docs)``,
    asked after every page, may end the query early.
    """
    docs: list[dict[str, Any]] = []
    fetched = cached = 0
    wanted = limit if limit is not None else math.inf
    with tqdm(desc=f"MP {query.name}", unit="material", disable=None) as bar:
        for page in itertools.count():
            payload = cache.load(page)
            if payload is None:
                payload = get_page(page)
                cache.save(page, payload)
                fetched += 1
            else:
                cached += 1
            if page == 0:  # the first page tells how many documents the query matches
                wanted = min(wanted, payload["total_doc"])
                bar.total = wanted
                bar.refresh()
            docs.extend(payload["data"])
            bar.update(len(payload["data"]))
            if len(payload["data"]) < page_size or len(docs) >= wanted:
                break
            if enough is not None and enough(docs):
                break
    if limit is not None:
        docs = docs[:limit]
    log.info(
        "MP query %s: %d materials (%d pages requested, %d from the cache %s)",
        query.name,
        len(docs),
        fetched,
        cached,
        cache.dir,
    )
    return docs


# -- documents to records ------------------------------------------------------------------------
def _number(value: Any) -> float:
    """A finite float, or NaN for None / missing / non-numeric / non-finite."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _vrh(modulus: Any) -> float:
    return _number(modulus.get("vrh")) if isinstance(modulus, Mapping) else math.nan


def poisson_from_moduli(k_vrh: float, g_vrh: float) -> float:
    """Isotropic Poisson ratio (3K − 2G) / (6K + 2G) from bulk and shear moduli (GPa)."""
    denominator = 6 * k_vrh + 2 * g_vrh
    if not (math.isfinite(k_vrh) and math.isfinite(g_vrh)) or denominator == 0:
        return math.nan
    return (3 * k_vrh - 2 * g_vrh) / denominator


def doc_properties(doc: Mapping[str, Any]) -> dict[str, float]:
    """The eight property columns of a summary document (NaN where unknown)."""
    k_vrh = _vrh(doc.get("bulk_modulus"))
    g_vrh = _vrh(doc.get("shear_modulus"))
    poisson = _number(doc.get("homogeneous_poisson"))
    if math.isnan(poisson):
        poisson = poisson_from_moduli(k_vrh, g_vrh)
    values = {
        "e_form_ev_per_atom": _number(doc.get("formation_energy_per_atom")),
        "energy_ev_per_atom": _number(doc.get("energy_per_atom")),
        "band_gap_ev": _number(doc.get("band_gap")),
        "k_vrh_gpa": k_vrh,
        "g_vrh_gpa": g_vrh,
        "poisson_ratio": poisson,
        "refractive_index": _number(doc.get("n")),
        "dielectric_total": _number(doc.get("e_total")),
    }
    assert tuple(values) == PROPERTY_COLUMNS
    return values


def docs_to_records(
    docs: list[dict[str, Any]], source: str, skipped: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Records keyed by material id (first document of an id wins); ``skipped`` counts why."""
    from pymatgen.core import Structure

    records: dict[str, dict[str, Any]] = {}
    for doc in docs:
        material_id = doc.get("material_id")
        if not material_id:
            skipped["no material_id"] = skipped.get("no material_id", 0) + 1
            continue
        material_id = str(material_id)
        if material_id in records:
            continue
        try:
            structure: Structure = Structure.from_dict(doc["structure"])
        except Exception:  # any malformed structure dict: counted, not fatal
            skipped["unreadable structure"] = skipped.get("unreadable structure", 0) + 1
            continue
        records[material_id] = {
            "material_id": material_id,
            "structure": structure,
            **doc_properties(doc),
            "source": source,
        }
    return records


# -- the client ------------------------------------------------------------------------------
class Client:
    """The API on our retrying session, with its database version; ``fetch`` pages a query
    through the page cache. Use as a context manager (closes the session)."""

    def __init__(
        self, settings: Mapping[str, Any], cache_dir: Path, *, api_key: str | None = None
    ) -> None:
        self.settings = dict(settings)
        key = resolve_api_key(api_key)
        endpoint = settings.get("endpoint") or DEFAULT_ENDPOINT
        self.endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
        retries, backoff_s = int(settings["retries"]), float(settings["backoff_s"])
        self.page_size = int(settings["page_size"])
        self.cache_dir = Path(cache_dir)
        # The first contact retries only a busy server (429/5xx): nothing answering there
        # is a wrong endpoint or no network, which waiting does not heal.
        with make_session(
            key, retries=retries, backoff_s=backoff_s, connect_retries=0, read_retries=0
        ) as probe:
            self.db_version = _db_version(probe, self.endpoint, float(settings["timeout_s"]))
        self.session = make_session(key, retries=retries, backoff_s=backoff_s)
        try:
            log.info(
                "Materials Project API at %s, database version %s", self.endpoint, self.db_version
            )
            self.rester = _open_rester(
                key, self.endpoint, self.session, retries=retries, backoff_s=backoff_s
            )
        except BaseException:
            self.session.close()
            raise

    @property
    def source(self) -> str:
        return f"mp-api:{self.db_version}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def fetch(
        self,
        resource: Any,
        query: Query,
        fields: tuple[str, ...],
        *,
        limit: int | None = None,
        enough: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Every document of ``query`` from ``resource`` (e.g. ``rester.materials.thermo``)."""
        cache = PageCache(
            self.cache_dir,
            {
                "query": query.name,
                "endpoint": self.endpoint,
                "db_version": self.db_version,
                "criteria": dict(query.criteria),
                "fields": list(fields),
                "sort": SORT_FIELD,
                "page_size": self.page_size,
            },
        )
        return fetch_query(
            query,
            get_page=lambda page: _fetch_page(resource, query, page, self.settings, fields),
            cache=cache,
            page_size=self.page_size,
            limit=limit,
            enough=enough,
        )


# -- the entry point -----------------------------------------------------------------------------
def fetch_mp_records(
    settings: dict[str, Any], cache_dir: Path, *, api_key: str | None = None
) -> list[dict[str, Any]]:
    """Fetch the VAE/UNet and general sets from the Materials Project, merged by material id.

    settings: the validated ``data.mp`` config section (endpoint, max_sites, general_limit,
        page_size, retries, backoff_s, timeout_s).
    cache_dir: where raw pages are cached (created if missing); a re-run re-uses them.
    api_key: overrides ``MP_API_KEY``.

    Returns one dict per material: ``material_id``, ``structure`` (pymatgen Structure), the
    eight :data:`~matdisc.io.schemas.PROPERTY_COLUMNS` (float, NaN where unknown) and
    ``source`` (``"mp-api:<database version>"``); VAE/UNet-set materials first, each id once.
    Raises :class:`UserError` for a missing key or an API that fails after all retries.
    """
    with Client(settings, cache_dir, api_key=api_key) as client:
        summary = client.rester.materials.summary
        check_fields(summary, SUMMARY_FIELDS)
        source = client.source
        skipped: dict[str, int] = {}
        vae = client.fetch(summary, vae_query(settings["max_sites"]), SUMMARY_FIELDS)
        records = docs_to_records(vae, source, skipped)
        n_vae = len(records)
        general_limit = int(settings["general_limit"])
        general: set[str] = set()
        for query in GENERAL_QUERIES:
            remaining = general_limit - len(general)
            if remaining <= 0:
                break
            known = frozenset(general)

            def new_ids_suffice(
                docs: list[dict[str, Any]], known=known, remaining=remaining
            ) -> bool:
                return len({str(d.get("material_id")) for d in docs} - known) >= remaining

            # At most general_limit documents per query: enough to fill the set even when the
            # first ones are all in it already; the query stops early once it has filled it.
            docs = client.fetch(
                summary, query, SUMMARY_FIELDS, limit=general_limit, enough=new_ids_suffice
            )
            for material_id, record in docs_to_records(docs, source, skipped).items():
                if material_id not in general and len(general) < general_limit:
                    general.add(material_id)
                    records.setdefault(material_id, record)

    for reason, count in sorted(skipped.items()):
        log.warning("skipped %d Materials Project documents: %s", count, reason)
    log.info(
        "Materials Project: %d materials (%d VAE/UNet set, %d general set, %d in both)",
        len(records),
        n_vae,
        len(general),
        n_vae + len(general) - len(records),
    )
    return list(records.values())


# -- thermo entries for the hull -----------------------------------------------------------------
#: Thermo fields read for a hull: energy_per_atom is the MP2020-corrected total energy.
THERMO_FIELDS: tuple[str, ...] = (
    "material_id",
    "formula_pretty",
    "energy_per_atom",
    "energy_above_hull",
    "thermo_type",
)
#: The Materials Project's GGA/GGA+U mixing scheme, the energy scale CHGNet is trained on.
THERMO_TYPE = "GGA_GGA+U"
#: Chemical systems per thermo query (keeps the URL short).
SYSTEMS_PER_QUERY = 50


def all_subsystems(systems: Iterable[Iterable[str]]) -> list[str]:
    """Every non-empty sub-system of ``systems`` as the API writes it (``Ca-O-Zr``), sorted."""
    found: set[str] = set()
    for system in systems:
        elements = sorted(set(system))
        for size in range(1, len(elements) + 1):
            found |= {"-".join(sub) for sub in itertools.combinations(elements, size)}
    return sorted(found, key=lambda s: (s.count("-"), s))


def fetch_thermo_entries(
    systems: Iterable[Iterable[str]],
    settings: Mapping[str, Any],
    cache_dir: Path,
    *,
    api_key: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """The GGA/GGA+U thermo documents (:data:`THERMO_FIELDS`) of every material whose
    chemical system lies inside one of ``systems``, and the source (``mp-api:<version>``).

    settings: the validated ``data.mp`` section; pages are cached in ``cache_dir`` as the
    download's are.
    """
    wanted = all_subsystems(systems)
    docs: list[dict[str, Any]] = []
    with Client(settings, cache_dir, api_key=api_key) as client:
        thermo = client.rester.materials.thermo
        check_fields(thermo, THERMO_FIELDS)
        for start in range(0, len(wanted), SYSTEMS_PER_QUERY):
            chunk = wanted[start : start + SYSTEMS_PER_QUERY]
            query = Query("thermo", {"chemsys": ",".join(chunk), "thermo_types": THERMO_TYPE})
            docs += client.fetch(thermo, query, THERMO_FIELDS)
        source = client.source
    log.info(
        "Materials Project thermo: %d %s entries in %d chemical systems",
        len(docs), THERMO_TYPE, len(wanted),
    )  # fmt: skip
    return docs, source
