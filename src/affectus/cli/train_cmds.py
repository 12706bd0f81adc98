"""Model commands: train, evaluate, params, demo."""

from affectus.cli import app  # noqa: F401
