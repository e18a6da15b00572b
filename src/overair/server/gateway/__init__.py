"""The device gateway: the Mosquitto broker we run, and the service's MQTT side."""
