"""Jobs and per-device executions (AWS IoT Jobs semantics)."""
