"""A store writer that receives log records twice keeps only what lies after the store's position."""

from __future__ import annotations

import orjson

from cohort.core.log_record import LogRecord
from cohort.core.process_batch import after_offset, finish_batch, prepare_batch
from cohort.state.mid_window import MidWindow


def test_only_records_after_the_offset_are_kept_and_still_reconcile(sample_events):
    records = [LogRecord(payload=orjson.dumps({"events": [*sample_events[i * 10:i * 10 + 10], "bad"]}),
                         event_count=11, offset=20 + i, partition=2, headers={"msgid": f"m{i}"}) for i in range(5)]
    prepared = prepare_batch(records, now_ms=1, config_version="v")
    assert after_offset(prepared, 24) is None and after_offset(prepared, 30) is None
    assert after_offset(prepared, 19) is prepared
    tail = after_offset(prepared, 22)
    assert (tail.first_offset, tail.last_offset, tail.events_in, tail.partition) == (23, 24, 22, 2)
    assert set(tail.rows.column("log_offset").to_pylist()) == {23, 24}
    assert {f.log_offset for f in tail.failed} == {23, 24} and tail.requests.num_rows == 2
    outcome = finish_batch(tail, MidWindow(60))
    assert outcome.stored + outcome.failed_count + outcome.duplicates == outcome.events_in == 22
