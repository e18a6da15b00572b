"""Event messages on AWS's reserved topics (`$aws/events/...`), their configuration and
the identities allowed to read them (issue 15, item 5)."""
