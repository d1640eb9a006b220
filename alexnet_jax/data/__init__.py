"""The input: one entry point (pipeline.open(spec) -> Input), the spec it reads (spec.py), the
modules below it, and the datasets the project generates."""
