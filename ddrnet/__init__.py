"""DDRNet deployment suite: train, compress, export and run DDRNet on road scenes."""
# zlib must be loaded before paddle: paddle's bundled zlib otherwise shadows it and OpenCV then fails
# to read PNGs ("libpng error: IDAT: bad parameters to zlib") or crashes writing them.
import zlib  # noqa: F401

__version__ = "0.1.0"
