"""The hostile-query benchmark: it reports what it sent and got beside the load figures, and the
harness itself never hangs, stops by itself, and targets only this machine."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from cohort.benchmark.hostile import (HostileClient, HostileConfig, HostileProcess, chained_ctes, hostile_queries,
                                      require_loopback)
from cohort.benchmark.load import LoadConfig, run_against_own_server

SMALL = dict(threads=2, burst=3, range_size=1000, repeat_bytes=100, statement_bytes=4000, nesting=50,
             request_timeout_s=15)


def test_the_catalogue_holds_every_kind_of_hostile_query():
    queries = hostile_queries(HostileConfig())
    assert set(queries) == {"memory_range", "huge_values", "string_agg", "cross_join", "chained_ctes",
                            "deep_parentheses", "recursive_cte"}
    assert "len(range(100000000))" in queries["memory_range"]
    assert 250_000 < len(queries["chained_ctes"]) <= 256_000 and queries["chained_ctes"].count(" AS (") > 8000
    assert queries["deep_parentheses"].count("(") == 50_000
    assert len(chained_ctes(1000)) <= 1000


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "https://cohort.example.org", "http://0.0.0.0:8000"])
def test_only_a_server_on_this_machine_is_targeted(url):
    with pytest.raises(ValueError, match="this machine"):
        require_loopback(url)
    with pytest.raises(ValueError):
        HostileClient(url, HostileConfig(), deadline=time.monotonic() + 1)


def test_a_server_that_never_answers_does_not_hang_the_client():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(listener.accept()[0]) for _ in iter(int, 1)], daemon=True).start()
    client = HostileClient(f"http://127.0.0.1:{listener.getsockname()[1]}",
                           HostileConfig(threads=2, burst=2, request_timeout_s=1.0), deadline=time.monotonic() + 1)
    started = time.monotonic()
    client.start()
    time.sleep(1)
    client.stop()
    assert time.monotonic() - started < 8
    report = client.report()
    assert report["sent"] > 0 and report["answered"] == 0 and report["unfinished_threads"] == 0
    assert report["by_error"].get("ReadTimeout", 0) > 0
    listener.close()


def _silent_server() -> socket.socket:
    """A listener that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(listener.accept()[0]) for _ in iter(int, 1)], daemon=True).start()
    return listener


def test_the_client_in_its_own_process_reports_back_and_stops_by_itself():
    listener = _silent_server()
    config = HostileConfig(threads=2, burst=2, request_timeout_s=1.0, only=("memory_range",))
    # a deadline with room for a spawned, niced process to start on a busy machine
    client = HostileProcess(f"http://127.0.0.1:{listener.getsockname()[1]}", config, deadline=time.monotonic() + 5)
    started = time.monotonic()
    client.start()
    while client._process.is_alive() and time.monotonic() - started < 30:  # it stops by itself past the deadline
        time.sleep(0.1)
    assert not client._process.is_alive(), "the hostile process did not stop by itself"
    client.stop()  # its report waited for this
    report = client.report()
    assert report["sent"] > 0 and report["answered"] == 0 and report["unfinished_threads"] == 0
    assert set(report["by_query"]) == {"memory_range", "many_at_once"}  # `only` picks from the catalogue
    listener.close()


def test_a_client_process_that_dies_is_reported_not_hung_on():
    client = HostileProcess("http://127.0.0.1:9", HostileConfig(threads=1, burst=0), deadline=time.monotonic() + 30)
    client.start()
    client._process.kill()
    client.stop()
    assert client.report()["by_error"] == {"the hostile process sent no report": 1}


@pytest.mark.e2e
def test_a_short_hostile_run_reports_what_the_client_sent_and_got_beside_the_load(tmp_path):
    config = LoadConfig(duration_s=3.0, batch_size=100, concurrency=2, pool_batches=20, rate=1000,
                        hostile=HostileConfig(**SMALL))
    result = run_against_own_server(tmp_path, config)
    assert result.events_acked > 0 and result.stored == result.events_acked and result.unaccounted == 0
    assert set(result.ack_latency_ms) == {"p50", "p95", "p99", "max"} and result.server_peak_rss_mb > 0
    assert result.server_exit == ""
    report = result.hostile
    assert report["sent"] > 0 and report["answered"] > 0 and report["unfinished_threads"] == 0
    assert sum(report["by_status"].values()) == report["sent"]
    # a short run on a busy machine may not reach every query; what it reports must be known queries
    assert 2 <= len(report["by_query"])
    assert set(report["by_query"]) <= set(hostile_queries(HostileConfig())) | {"many_at_once"}
    for figures in report["by_query"].values():
        assert figures["sent"] == sum(figures["by_status"].values())
        assert {"by_error", "max_seconds", "max_answer_mb"} <= set(figures)
    assert report["acceptance"]["ack_p99_ms"] == result.ack_latency_ms["p99"]
    assert report["acceptance"]["server_survived"] is True
    assert report["acceptance"]["server_ack_p99_ms"] == result.server_ack_latency_ms["p99"] > 0
    assert {"ack_p99_target_ms", "server_peak_rss_mb", "server_rss_target_mb", "met"} <= set(report["acceptance"])


@pytest.mark.e2e
def test_a_server_over_the_memory_guard_is_killed_and_the_run_ends_by_itself(tmp_path):
    config = LoadConfig(duration_s=30.0, batch_size=100, concurrency=2, pool_batches=20, rate=1000,
                        hostile=HostileConfig(**SMALL), rss_guard_mb=1)
    started = time.monotonic()
    result = run_against_own_server(tmp_path, config)
    assert time.monotonic() - started < 25, "the run must end once the server is gone, not at its deadline"
    assert result.server_exit.startswith("killed by the harness")
    assert result.hostile["acceptance"]["server_survived"] is False and result.hostile["acceptance"]["met"] is False
    assert result.unaccounted is None and result.stored is None
