"""Command-line tools that are not part of the running agent."""
