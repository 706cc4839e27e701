"""Deployment artefacts: the container image and the Kubernetes manifests, checked statically."""
