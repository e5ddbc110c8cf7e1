"""Writing: scalars for every Lightning logger, TensorBoard extras, the end-of-fit report."""
