"""The data flywheel on the device: which frames to send home, within budgets, deduplicated,
with privacy applied before anything is encoded."""
