"""Harnesses that drive a real server: load (throughput, latency) and crash (losslessness)."""
