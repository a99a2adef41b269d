"""Building and rebuilding the agent's pipeline from its config (at start and on reload)."""
