"""affectus: multimodal emotion recognition from text, audio and vision.

The Python API is `affectus.train(...)` and `affectus.load(run_dir)`; both import the training
stack lazily so that `import affectus` stays light.
"""

__version__ = "0.1.0"


def train(*args, **kwargs):
    from affectus.api import train as _train

    return _train(*args, **kwargs)


def load(*args, **kwargs):
    from affectus.api import load as _load

    return _load(*args, **kwargs)
