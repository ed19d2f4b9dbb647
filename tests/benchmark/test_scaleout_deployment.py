"""What a harness reads of a deployment without asking it: which raw partitions a worker holds."""

from __future__ import annotations

from cohort.benchmark.scaleout_deployment import held_partitions

LOG = """cohort worker running (Kafka 127.0.0.1:9092)
2026-11-26 01:49:13,648 INFO cohort.kafka consumer group g: partitions [1, 3] of t-raw assigned
2026-11-26 01:49:21,248 INFO cohort.kafka consumer group g: partitions [0, 2] of t-raw assigned
2026-11-26 01:49:21,300 INFO cohort.kafka consumer group s: partitions [5] of t-processed assigned
2026-11-26 01:49:27,099 INFO cohort.kafka consumer group g: partitions [0, 1] of t-raw revoked
2026-11-26 01:49:27,104 INFO cohort.kafka consumer group g: partitions [] of t-raw assigned
"""


def test_a_worker_holds_what_its_rounds_added_minus_what_they_took_away():
    assert held_partitions(LOG, "t-raw") == {2, 3}
    assert held_partitions(LOG + "... partitions [2] of t-raw lost\n", "t-raw") == {3}
    assert held_partitions(LOG + "... partitions [2, 3] of t-raw revoked\n", "t-raw") == set()


def test_an_empty_round_is_not_an_assignment():
    assert held_partitions("partitions [] of t-raw assigned\n", "t-raw") == set()
