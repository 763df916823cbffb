"""benchmarks/ood_aggregate.py on the shipped bundle's first member (the one whose features a bundle's OOD
check reads): the claim in benchmarks/RESULTS.md that averaging the stages' ratios flags every everyday photo
and the noise image there, where taking the largest misses one, and keeps the real melanoma inside."""

from __future__ import annotations

import pytest

from .conftest import benchmark, shared


@pytest.mark.slow
def test_the_mean_flags_every_photo_on_the_shipped_first_member_and_the_largest_misses_one(default_model):
    rows = benchmark("ood_aggregate").compare("default", [0], str(shared("dermamnist28")))
    by = {r["aggregate"]: r for r in rows}
    assert set(by) == {"max", "mean"} and all(r["member"] == 0 for r in rows)
    mean, largest = by["mean"], by["max"]
    assert min(mean["photos"].values()) > 1, mean["photos"]  # all ten flagged (measured: lowest, the noise image, 1.046)
    assert min(largest["photos"].values()) < 1, largest["photos"]  # misses one (measured: the noise image, 0.982)
    for r in rows:
        assert r["fullres"] < 0.7, r["fullres"]  # the real full-resolution melanoma stays well inside
        assert r["val"] <= 0.05 and r["random400"] <= 0.05, (r["val"], r["random400"])
