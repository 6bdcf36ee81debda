"""Benchmark for the Z-Image Serve app: load driver, live batch-size sweep, in-process baseline, reports."""
