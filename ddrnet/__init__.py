"""DDRNet deployment suite: train, compress, export and run DDRNet on road scenes."""
__version__ = "0.1.0"
