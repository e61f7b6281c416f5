"""n2vpipe: Noise2Void denoising of large fluorescence-microscopy volumes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("n2vpipe")
except PackageNotFoundError:
    __version__ = "0+unknown"
