"""affectus.inference.extract: turning raw media (transcripts today) into model inputs."""
