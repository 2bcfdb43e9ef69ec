"""fuse4seg: image-level fusion of multi-modal medical images trained by bi-level optimisation."""

__version__ = "0.1.0"
