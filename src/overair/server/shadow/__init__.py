"""The Device Shadow service: storage, MQTT topics and the iot-data API."""
