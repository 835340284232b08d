"""cvtool: train, evaluate, export and explain convolutional networks for computer vision."""

__version__ = "0.1.0"
