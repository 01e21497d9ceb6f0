"""ferkit: facial-expression recognition research on FER2013."""

__version__ = "0.1.0"
