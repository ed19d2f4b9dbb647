"""Analytics over the stored telemetry: learning metrics (and, later, workflow summaries and rollups)."""
