"""Progress: a log line per tenth of a loop, whatever the terminal."""

from __future__ import annotations

import logging

from matdisc.progress import progress


def test_one_log_line_per_tenth_and_every_item(caplog):
    with caplog.at_level(logging.INFO, logger="matdisc.progress"):
        items = list(progress(range(50), desc="relax", unit="structure"))
    assert items == list(range(50))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert lines[0].startswith("relax: 5 of 50 structure (10 %)")
    assert lines[-1].startswith("relax: 50 of 50 structure (100 %)")


def test_short_loops_and_loops_without_length(caplog):
    with caplog.at_level(logging.INFO, logger="matdisc.progress"):
        assert list(progress(range(3), desc="few")) == [0, 1, 2]
        assert list(progress(iter("abc"), desc="stream")) == ["a", "b", "c"]
    lines = [r.getMessage() for r in caplog.records]
    # three items: a line each (each is more than a tenth); a stream: one line at its end
    assert [line.split(" in ")[0] for line in lines] == [
        "few: 1 of 3 it (33 %)", "few: 2 of 3 it (67 %)", "few: 3 of 3 it (100 %)", "stream: 3 it",
    ]  # fmt: skip
