"""Generators for what is checked in but derived: the chart's CRD template, manifests/."""
