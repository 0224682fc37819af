"""Entrypoints: the controller, the runner inside Job pods, the CLI, and their wiring."""
