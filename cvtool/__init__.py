"""cvtool: train, evaluate, export and explain convolutional networks for computer vision.

`from cvtool import train, evaluate, predict, export, visualize, inspect, sweep` is the Python API (`cvtool.api`),
imported on first use: `import cvtool` (and the CLI's --help) loads neither torch nor Hydra.
"""

__version__ = "0.1.0"

API = ("train", "evaluate", "predict", "export", "visualize", "inspect", "sweep")
__all__ = [*API, "__version__"]


def __getattr__(name: str):
    if name in API:
        from cvtool import api

        return getattr(api, name)
    raise AttributeError(f"module 'cvtool' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
