"""cogserve: self-hosted CogView-4 image generation, wire-compatible with BigModel's images API."""

__version__ = "0.1.0"
