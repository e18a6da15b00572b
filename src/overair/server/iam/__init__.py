"""Operator identities: users and access keys (policies come with the IAM layer)."""
