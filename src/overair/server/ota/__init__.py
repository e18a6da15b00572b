"""The OTA Update Manager: one request becomes a signed image, a stream and a job."""
