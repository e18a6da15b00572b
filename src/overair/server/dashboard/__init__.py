"""The web dashboard `overair serve` serves under /dashboard/ (docs/dashboard.md):
sign-in (`signin.py`, `session.py`, `throttle.py`), the pages and actions (`routes.py`),
what they read (`queries.py`), templates and the vendored script and style."""
