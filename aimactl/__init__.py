"""aimactl: declarative GitOps for AI inference on edge GPU machines."""

__version__ = "0.1.0"
