"""stopline: a Kubernetes operator that stops GPU training jobs early and keeps the weights."""

from importlib import metadata

GROUP = "stopline.dev"
VERSION = "v1alpha1"
PLURAL = "trainingjobs"
KIND = "TrainingJob"

try:
    # the one source: pyproject.toml's version, as the installed distribution's metadata carries it
    __version__ = metadata.version("stopline")
except metadata.PackageNotFoundError:  # the source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION", "__version__"]
