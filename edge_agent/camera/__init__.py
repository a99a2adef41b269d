"""Per-camera frame stages that run before the detector (motion gating, ...)."""
