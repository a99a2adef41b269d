"""Core values shared by every stage: detections as arrays, geometry."""
