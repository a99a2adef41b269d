"""Orders from the broker (commands, model updates) and Home Assistant discovery."""
