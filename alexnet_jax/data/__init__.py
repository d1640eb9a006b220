"""The input pipeline, the generated dataset and the training-set statistics."""
