"""Command-line tools built on the core (inspect, ...)."""
