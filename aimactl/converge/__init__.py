"""Converging hosts: observe them, plan against the manifests, apply in waves, record what happened."""
