"""benchmarks/study_load.py's app path (issue 26): readers on the Streamlit reading page over its websocket.

Two readers (one solo, one assisted) read a 3-case study through ``skinlesion app --study-db`` as a browser
does (the invite link's query, the form's widget states on submit); every answer the page locked must be in
the database once, as it was sent, and every case's image must be that case's.
"""

from __future__ import annotations

import pytest

from .conftest import benchmark


@pytest.mark.slow
def test_study_load_app_path_two_readers_lose_nothing_and_duplicate_nothing(default_model):
    pytest.importorskip("streamlit")
    pytest.importorskip("websockets")
    study_load = benchmark("study_load")
    try:
        (r,) = study_load.main(["--readers", "2", "--cases", "3", "--backend", "sqlite", "--via", "app", "--timeout", "300"])
    except study_load.ServerDidNotStart as exc:
        if exc.stage != "start":  # the app runs but its reading page fails: that is a failure, not a skip
            raise
        pytest.skip(f"Streamlit cannot start here: {exc}")
    assert r["readers_app"] == 2 and r["readers_rest"] == 0
    assert r["errors"] == 0, r["error_examples"]
    assert r["answers_expected"] == 3 + 2 * 3  # the solo reader once per case, the assisted one answers and revises
    assert r["answers_locked"] == r["answers_stored"] == r["answers_expected"], r
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["mismatched"] == 0, r
    assert r["wrong_image"] == 0, r
    assert r["p95_ms"] is not None and r["p95_ms"] > 0
