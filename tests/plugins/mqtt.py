"""MQTT test fixtures (mosquitto from Debian on a free loopback port)."""
