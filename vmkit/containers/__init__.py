"""Containers: namespaces, cgroups, images in layers, Docker's life cycle. Placeholder, filled by chapter 04_containers (course/04_containers/)."""
