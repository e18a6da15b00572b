"""Who did what, allowed or denied, from where."""
