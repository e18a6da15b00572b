"""Fleet provisioning by claim (issue 20, item 2)."""
