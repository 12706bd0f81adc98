"""Data commands: inspect, synth, convert."""

from affectus.cli import app  # noqa: F401
