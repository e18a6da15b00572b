"""The overair server: operator API, device service, scheduler and storage."""
