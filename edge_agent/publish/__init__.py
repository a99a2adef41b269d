"""Publishing: message payloads and the MQTT connection."""
