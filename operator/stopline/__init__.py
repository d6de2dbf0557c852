"""stopline: a Kubernetes operator that stops GPU training jobs early and keeps the weights."""

GROUP = "stopline.dev"
VERSION = "v1alpha1"
PLURAL = "trainingjobs"
KIND = "TrainingJob"

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION"]
