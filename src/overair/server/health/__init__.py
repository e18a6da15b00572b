"""Health-gated rollouts (issue 18): gates over device health reports, and their monitor."""
