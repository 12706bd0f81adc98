"""Offline feature extractors: decoding, audio, vision and text, each a small class with a JSON config."""
