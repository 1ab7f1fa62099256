"""aiplane: a Kubernetes-native control plane for AI automation (CLI, settings, logging, telemetry)."""

__version__ = "0.1.0"
