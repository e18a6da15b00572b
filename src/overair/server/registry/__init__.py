"""Things, thing groups, device certificates and their attachments."""
