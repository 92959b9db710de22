"""The ``mp`` download source against a Materials Project stand-in on 127.0.0.1.

``MPRester`` (mp-api) really runs here: it talks HTTP to :mod:`mp_server`, which answers the
heartbeat and summary endpoints, records every request and injects 429/5xx answers and
stalls. Backoffs and time-outs are tiny so the whole file runs in seconds.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mp_server import THERMO_PATH, FakeMPServer, Fault, Request, make_docs, thermo_doc
from pymatgen.core import Structure

from matdisc.data import mp
from matdisc.errors import UserError
from matdisc.io.schemas import PROPERTY_COLUMNS

# 32 characters like a real key; distinctive so that a leak is found by a plain search.
KEY = "TESTKEYzq8Xv3Rm7Lp2Wn9Ks4Jd6Hf1Y"
DOCS = make_docs()
PAGE = 4


@pytest.fixture
def server() -> Any:
    with FakeMPServer(DOCS, api_key=KEY) as fake:
        yield fake


def mp_settings(server: FakeMPServer | str, **overrides: Any) -> dict[str, Any]:
    settings = {
        "endpoint": server if isinstance(server, str) else server.url,
        "max_sites": 40,
        "general_limit": 100,
        "page_size": PAGE,
        "retries": 3,
        "backoff_s": 0.01,
        "timeout_s": 5.0,
    }
    settings.update(overrides)
    return settings


def query_of(request: Request) -> str:
    """Which of our queries a summary request belongs to."""
    if "formula" in request.params:
        return "vae-cubic"
    return f"general-{request.params.get('has_props', 'all')}"


def page_requests(server: FakeMPServer) -> Counter[tuple[str, int | None]]:
    return Counter((query_of(r), r.offset) for r in server.summary_requests())


def current(doc: dict[str, Any]) -> bool:
    """Not deprecated and not from the GNoME batch: what every query asks for."""
    return not doc["deprecated"] and doc["batch_id"] != "gnome_r2scan_statics"


def expected_vae_ids() -> list[str]:
    return sorted(
        d["material_id"]
        for d in DOCS
        if d["symmetry"]["crystal_system"] == "Cubic"
        and d["nsites"] <= 40
        and d["formula_anonymous"] in mp.VAE_FORMULAS
        and current(d)
    )


def test_fetch_pages_through_every_query_once(server: FakeMPServer, tmp_path: Path) -> None:
    records = mp.fetch_mp_records(mp_settings(server), tmp_path / "cache", api_key=KEY)

    vae_ids = expected_vae_ids()
    assert len(vae_ids) == 21
    live = sorted(d["material_id"] for d in DOCS if current(d))
    ids = [r["material_id"] for r in records]
    assert ids[: len(vae_ids)] == vae_ids  # the VAE/UNet set first, in id order
    assert sorted(ids) == live  # general set adds the non-cubic ones; no duplicates
    assert len(live) == len(DOCS) - 2  # the deprecated and the GNoME one are left out

    # Every page of every query was asked for exactly once, with our page size and order.
    counts = page_requests(server)
    expected = {
        "vae-cubic": 21,
        "general-elasticity": sum(1 for d in DOCS if d["has_props"]["elasticity"] and current(d)),
        "general-dielectric": sum(1 for d in DOCS if d["has_props"]["dielectric"] and current(d)),
        "general-all": len(live),
    }
    for name, total in expected.items():
        offsets = {o for (q, o), n in counts.items() if q == name}
        assert offsets == set(range(0, total, PAGE)), name
    assert set(counts.values()) == {1}
    for request in server.summary_requests():
        assert request.params["_limit"] == str(PAGE)
        assert request.params["_sort_fields"] == "material_id"
        assert request.headers["x-api-key"] == KEY
        assert set(request.params["_fields"].split(",")) == set(mp.SUMMARY_FIELDS)


def test_records_carry_structure_and_the_eight_properties(
    server: FakeMPServer, tmp_path: Path
) -> None:
    records = {
        r["material_id"]: r for r in mp.fetch_mp_records(mp_settings(server), tmp_path, api_key=KEY)
    }
    docs = {d["material_id"]: d for d in DOCS}
    computed_poisson = 0
    for material_id, record in records.items():
        doc = docs[material_id]
        assert set(record) == {"material_id", "structure", "source", *PROPERTY_COLUMNS}
        assert record["source"] == "mp-api:2025.09.25"
        assert isinstance(record["structure"], Structure)
        assert record["structure"] == Structure.from_dict(doc["structure"])
        assert record["e_form_ev_per_atom"] == doc["formation_energy_per_atom"]
        assert record["energy_ev_per_atom"] == doc["energy_per_atom"]
        assert record["band_gap_ev"] == doc["band_gap"]
        if doc["bulk_modulus"] is None:
            for column in ("k_vrh_gpa", "g_vrh_gpa", "poisson_ratio"):
                assert math.isnan(record[column])
        else:
            k, g = doc["bulk_modulus"]["vrh"], doc["shear_modulus"]["vrh"]
            assert (record["k_vrh_gpa"], record["g_vrh_gpa"]) == (k, g)
            assert record["poisson_ratio"] == pytest.approx((3 * k - 2 * g) / (6 * k + 2 * g))
            computed_poisson += doc["homogeneous_poisson"] is None
        if doc["e_total"] is None:
            assert math.isnan(record["dielectric_total"]) and math.isnan(record["refractive_index"])
        else:
            assert record["dielectric_total"] == doc["e_total"]
            assert record["refractive_index"] == doc["n"]
    assert computed_poisson >= 2  # the K/G fallback was exercised, not only the API value


def test_general_limit_caps_the_general_set(server: FakeMPServer, tmp_path: Path) -> None:
    records = mp.fetch_mp_records(mp_settings(server, general_limit=10), tmp_path, api_key=KEY)
    ids = {r["material_id"] for r in records}
    elastic = {d["material_id"] for d in DOCS if d["has_props"]["elasticity"] and current(d)}
    assert len(elastic) == 8
    # 8 elastic + the first 2 dielectric ones not among them fill the limit of 10.
    dielectric_new = sorted(
        d["material_id"]
        for d in DOCS
        if d["has_props"]["dielectric"] and current(d) and d["material_id"] not in elastic
    )[:2]
    assert ids == set(expected_vae_ids()) | elastic | set(dielectric_new)
    counts = page_requests(server)
    assert counts[("general-dielectric", 0)] == 1
    assert ("general-dielectric", PAGE) not in counts  # stopped once the set was full
    assert not any(q == "general-all" for q, _ in counts)


def test_retries_429_and_500_with_doubling_backoff(server: FakeMPServer, tmp_path: Path) -> None:
    # Our own heartbeat read (retried by the session), then MPRester's bare one (retried by
    # restarting the client): both must survive a 503.
    server.add_fault(Fault(status=503, path="/heartbeat", times=1, user_agent="matdisc/"))
    server.add_fault(Fault(status=503, path="/heartbeat", times=1, user_agent="python-requests/"))
    server.add_fault(Fault(status=429, offset=PAGE, times=1))
    server.add_fault(Fault(status=500, offset=PAGE, times=1))
    settings = mp_settings(server, general_limit=0, backoff_s=0.1)

    records = mp.fetch_mp_records(settings, tmp_path, api_key=KEY)

    assert [r["material_id"] for r in records] == expected_vae_ids()
    tries = [r for r in server.summary_requests() if r.offset == PAGE]
    assert [r.status for r in tries] == [429, 500, 200]
    # backoff_s before the first retry, twice that before the second
    assert tries[1].time - tries[0].time >= 0.1
    assert tries[2].time - tries[1].time >= 0.2
    heartbeats = [r for r in server.requests if r.path == "/heartbeat"]
    assert [r.status for r in heartbeats][:4] == [503, 200, 503, 200]
    assert heartbeats[0].headers["user-agent"].startswith("matdisc/")
    assert heartbeats[2].headers["user-agent"].startswith("python-requests/")
    assert Counter(r.offset for r in server.summary_requests() if r.status == 200) == Counter(
        range(0, 21, PAGE)
    )


def test_retries_a_timed_out_request(server: FakeMPServer, tmp_path: Path) -> None:
    server.add_fault(Fault(status=None, offset=2 * PAGE, delay_s=3.0, times=1))
    settings = mp_settings(server, general_limit=0, timeout_s=1.0)

    records = mp.fetch_mp_records(settings, tmp_path, api_key=KEY)

    assert [r["material_id"] for r in records] == expected_vae_ids()
    assert sum(1 for r in server.summary_requests() if r.offset == 2 * PAGE) == 2


def test_interrupted_download_resumes_without_repeating_cached_pages(
    server: FakeMPServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    settings = mp_settings(server, retries=2)
    server.add_fault(Fault(status=503, offset=3 * PAGE, times=-1))  # an outage at page 4

    with pytest.raises(UserError, match=r"page 4 \(HTTP 503\) after 2 retries.*resumes"):
        mp.fetch_mp_records(settings, cache, api_key=KEY)
    first = page_requests(server)
    assert first == Counter(
        {("vae-cubic", 0): 1, ("vae-cubic", 4): 1, ("vae-cubic", 8): 1, ("vae-cubic", 12): 3}
    )
    assert len(list(cache.glob("vae-cubic-*/page-*.json"))) == 3

    server.clear_faults()
    server.requests.clear()
    resumed = mp.fetch_mp_records(settings, cache, api_key=KEY)
    second = page_requests(server)
    vae_offsets = sorted(o for (q, o) in second if q == "vae-cubic")
    assert vae_offsets == [12, 16, 20]  # only the pages the first run did not finish
    assert set(second.values()) == {1}

    server.requests.clear()
    again = mp.fetch_mp_records(settings, cache, api_key=KEY)
    assert server.summary_requests() == []  # all pages cached: nothing re-requested

    # The same records as a download that was never interrupted.
    fresh = mp.fetch_mp_records(settings, tmp_path / "fresh", api_key=KEY)
    for result in (resumed, again):
        assert [r["material_id"] for r in result] == [r["material_id"] for r in fresh]
        assert [r["structure"] for r in result] == [r["structure"] for r in fresh]


def test_unreadable_cached_page_is_fetched_again(server: FakeMPServer, tmp_path: Path) -> None:
    settings = mp_settings(server, general_limit=0)
    mp.fetch_mp_records(settings, tmp_path, api_key=KEY)
    (page,) = tmp_path.glob("vae-cubic-*/page-00001.json")
    page.write_text('{"data": [', encoding="utf-8")  # e.g. a copy cut short
    server.requests.clear()

    records = mp.fetch_mp_records(settings, tmp_path, api_key=KEY)

    assert [r["material_id"] for r in records] == expected_vae_ids()
    assert page_requests(server) == Counter({("vae-cubic", PAGE): 1})


def test_missing_key_is_one_sentence_and_sends_nothing(
    server: FakeMPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(UserError) as excinfo:
        mp.fetch_mp_records(mp_settings(server), tmp_path)
    message = str(excinfo.value)
    assert message == mp.MISSING_KEY_MESSAGE
    assert "MP_API_KEY=" in message and "data.source: snapshot" in message
    assert message.count(". ") == 0 and message.endswith(".")
    assert server.requests == []


def test_key_is_read_from_the_environment(
    server: FakeMPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MP_API_KEY", KEY)
    records = mp.fetch_mp_records(mp_settings(server, general_limit=0), tmp_path)
    assert len(records) == 21
    assert {r.headers["x-api-key"] for r in server.summary_requests()} == {KEY}


def test_malformed_or_rejected_key_is_a_user_error_without_the_key(
    server: FakeMPServer, tmp_path: Path
) -> None:
    short = KEY[:20]
    with pytest.raises(UserError, match="32 characters") as excinfo:
        mp.fetch_mp_records(mp_settings(server), tmp_path, api_key=short)
    assert short not in str(excinfo.value)
    assert server.requests == []

    other = KEY[::-1]
    with pytest.raises(UserError, match=r"rejected the key in MP_API_KEY \(HTTP 401\)") as excinfo:
        mp.fetch_mp_records(mp_settings(server), tmp_path, api_key=other)
    assert other not in str(excinfo.value)
    assert len(server.summary_requests()) == 1  # 401 is not retried


def test_unreachable_endpoint_is_a_user_error(tmp_path: Path) -> None:
    with FakeMPServer(DOCS, api_key=KEY) as gone:
        settings = mp_settings(gone, retries=1)
    with pytest.raises(UserError, match="could not be reached"):
        mp.fetch_mp_records(settings, tmp_path, api_key=KEY)


def test_refused_connection_fails_at_once_whatever_the_retries(tmp_path: Path) -> None:
    """A refused first contact is not retried like a 503: with 6 retries and a 1 s backoff
    the doubling waits alone would take 63 s, one retry 1 s."""
    import time

    with FakeMPServer(DOCS, api_key=KEY) as gone:
        settings = mp_settings(gone, retries=6, backoff_s=1.0)
    started = time.monotonic()
    with pytest.raises(UserError, match="could not be reached"):
        mp.fetch_mp_records(settings, tmp_path, api_key=KEY)
    assert time.monotonic() - started < 0.9


def test_silent_endpoint_fails_after_one_timeout(tmp_path: Path) -> None:
    """A server that accepts the connection and never answers costs one ``timeout_s``, not
    one per retry."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        host, port = silent.getsockname()
        settings = mp_settings(f"http://{host}:{port}/", retries=6, timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(UserError, match=r"did not answer within 1 s.*timeout_s"):
            mp.fetch_mp_records(settings, tmp_path, api_key=KEY)
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.9


def test_key_never_reaches_logs_cache_or_errors(
    server: FakeMPServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 logs every URL at DEBUG
    cache = tmp_path / "cache"
    server.add_fault(Fault(status=500, offset=2 * PAGE, times=-1))
    with pytest.raises(UserError) as excinfo:
        mp.fetch_mp_records(mp_settings(server, retries=1), cache, api_key=KEY)
    server.clear_faults()
    mp.fetch_mp_records(mp_settings(server, retries=1), cache, api_key=KEY)

    assert server.summary_requests()[0].headers["x-api-key"] == KEY  # it was really used
    assert "127.0.0.1" in caplog.text  # the log did record the requests
    out, err = capfd.readouterr()
    assert "MP vae-cubic" not in err  # progress bars only on a terminal (stderr is not one here)
    written = [p.read_bytes() for p in cache.rglob("*") if p.is_file()]
    assert written
    for text in (caplog.text, out, err, str(excinfo.value), *map(bytes.decode, written)):
        assert KEY not in text


def test_download_stage_builds_the_structures_table_from_mp(
    server: FakeMPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download-structures stage's ``mp`` path end to end: API pages -> records -> table."""
    from matdisc.data.download import load_records
    from matdisc.data.records import build_table

    monkeypatch.setenv("MP_API_KEY", KEY)
    records = load_records({"source": "mp", "mp": mp_settings(server)}, tmp_path)
    frame, skipped = build_table(records, seed=0, split={"train": 0.8, "val": 0.1, "test": 0.1})

    assert skipped == {}
    assert sorted(frame["material_id"]) == sorted(d["material_id"] for d in DOCS if current(d))
    assert set(frame["source"]) == {"mp-api:2025.09.25"}
    classes = frame.set_index("formula")["structure_class"]
    assert classes["SrTiO3"] == "perovskite_ABX3"
    assert classes["TiNiSn"] == "half_heusler_XYZ"
    assert classes["MnAlCu2"] == "heusler_X2YZ"
    assert (
        frame.loc[frame["material_id"].isin(expected_vae_ids()), "crystal_system"] == "cubic"
    ).all()


def test_poisson_fallback_is_the_materials_project_formula() -> None:
    """(3K - 2G) / (6K + 2G) equals pymatgen's ElasticTensor.homogeneous_poisson (MP's value)."""
    from pymatgen.analysis.elasticity import ElasticTensor

    voigt = [  # a cubic elastic tensor (GPa), roughly that of silicon
        [166, 64, 64, 0, 0, 0],
        [64, 166, 64, 0, 0, 0],
        [64, 64, 166, 0, 0, 0],
        [0, 0, 0, 80, 0, 0],
        [0, 0, 0, 0, 80, 0],
        [0, 0, 0, 0, 0, 80],
    ]
    tensor = ElasticTensor.from_voigt(voigt)
    assert mp.poisson_from_moduli(tensor.k_vrh, tensor.g_vrh) == pytest.approx(
        tensor.homogeneous_poisson
    )
    assert math.isnan(mp.poisson_from_moduli(math.nan, 50.0))


def test_documents_without_id_or_readable_structure_are_counted() -> None:
    good, no_id, broken = (dict(DOCS[0]), dict(DOCS[1]), dict(DOCS[2]))
    no_id["material_id"] = None
    broken["structure"] = {"lattice": "not a lattice"}
    skipped: dict[str, int] = {}
    records = mp.docs_to_records([good, no_id, broken, good], "mp-api:x", skipped)
    assert list(records) == [good["material_id"]]
    assert skipped == {"no material_id": 1, "unreadable structure": 1}


# --- thermo entries for the hull (the judge's e_above_hull_mp) ---------------------------------
THERMO = [
    thermo_doc("mp-22862", "NaCl", -3.38),
    thermo_doc("mp-127", "Na", -1.31),
    thermo_doc("mp-22848", "Cl2", -1.83),
    thermo_doc("mp-9000", "Na3Cl", -1.9),  # above the hull
    thermo_doc("mp-22862", "NaCl", -4.2, thermo_type="R2SCAN"),  # another scale: left out
    thermo_doc("mp-2657", "TiO2", -8.9),  # another system: not asked for
]


def test_thermo_entries_of_every_subsystem_on_the_gga_scale(tmp_path: Path) -> None:
    from matdisc.stability.hull import Hulls

    with FakeMPServer(DOCS, api_key=KEY, thermo_docs=THERMO) as fake:
        settings = mp_settings(fake)
        docs, source = mp.fetch_thermo_entries([("Cl", "Na")], settings, tmp_path, api_key=KEY)
        thermo = [r for r in fake.requests if r.path == THERMO_PATH]
        assert {r.params["chemsys"] for r in thermo} == {"Cl,Na,Cl-Na"}
        assert {r.params["thermo_types"] for r in thermo} == {"GGA_GGA+U"}
        # a second call reads the cached pages
        again, _ = mp.fetch_thermo_entries([("Na", "Cl")], settings, tmp_path, api_key=KEY)
        assert len([r for r in fake.requests if r.path == THERMO_PATH]) == len(thermo)
    assert source == "mp-api:2025.09.25" and again == docs
    assert sorted(d["formula_pretty"] for d in docs) == ["Cl2", "Na", "Na3Cl", "NaCl"]
    frame = pd.DataFrame(
        {"formula": [d["formula_pretty"] for d in docs],
         "energy_ev_per_atom": [d["energy_per_atom"] for d in docs]}
    )  # fmt: skip
    hulls = Hulls(frame, {})
    assert hulls.judge("NaCl", -3.38).e_above_hull == pytest.approx(0.0, abs=1e-9)
    # Na3Cl (4 atoms) lies between 2 Na and 1 NaCl: the hull there is (E_Na + E_NaCl) / 2
    assert hulls.judge("Na3Cl", -1.9).e_above_hull == pytest.approx(
        -1.9 - (-1.31 - 3.38) / 2, abs=1e-6
    )


def test_subsystems_are_every_element_combination() -> None:
    assert mp.all_subsystems([("O", "Ca", "Ti"), ("Ca", "O")]) == [
        "Ca", "O", "Ti", "Ca-O", "Ca-Ti", "O-Ti", "Ca-O-Ti",
    ]  # fmt: skip
