"""The validators benchmark, run tiny: every figure is there, valid events pass, broken ones are refused,
and the core's events are all accounted for (stored or quarantined) with each library."""

from __future__ import annotations

from cohort.benchmark import validators
from cohort.benchmark.validators import BREAKS, broken, run


def test_broken_events_are_broken_each_way_and_the_originals_untouched(sample_events):
    before = [dict(e) for e in sample_events]
    damaged = broken(sample_events)
    assert sample_events == before
    assert [e for e, d in zip(sample_events, damaged) if e == d] == []
    assert len({type(d.get("ets")) for d in damaged[1::len(BREAKS)]}) == 1  # ets became text each time


def test_a_tiny_run_reports_every_figure():
    result = run(synthetic=1000, rounds=1, seed=3)
    libraries = {f["library"] for f in result["library"]}
    assert "jsonschema-rs" in libraries
    assert libraries == {"jsonschema-rs", "fastjsonschema"} or "fastjsonschema" in result["skipped"]
    for figure in result["library"]:
        assert figure["us_per_event"] > 0
        if figure["kind"] == "valid":
            assert figure["refused"] == 0
        else:  # a dropped edata field may be an optional one, an unexpected one may be allowed: most are refused
            assert figure["refused"] > figure["events"] * 0.8
    assert {f["data"] for f in result["core"]} == {"sample", "synthetic"}
    for figure in result["core"]:
        assert figure["us_per_event"] > 0 and 0 < figure["ratio_to_parse_only"] < 1
        assert {"extract", "validate", "route"} <= set(figure["stage_us_per_event"])
    if result["agreement"] is not None:
        assert result["agreement"]["same_verdict"] == result["agreement"]["events"]


def test_the_old_library_plugs_into_the_stage_and_is_taken_out_again():
    shipped = validators.validate_stage.validator_for
    try:
        candidate = validators.Fastjsonschema()
    except ImportError:
        return  # not installed: nothing to put in
    with candidate.in_core():
        assert validators.validate_stage.validator_for is not shipped
    assert validators.validate_stage.validator_for is shipped
