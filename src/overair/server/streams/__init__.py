"""Streams: named sets of files delivered to devices over MQTT in blocks."""
