"""`edge-agent collect`: the central side of sampling. Devices' samples messages (v2) arrive
on a shared MQTT subscription and become a dataset folder (images, an SQLite index, and COCO,
YOLO and Label Studio exports), crash-safe and without duplicates."""
