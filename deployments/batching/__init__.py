"""Batching: the gate that forms batches while the GPU is busy, the batch-size policy, the OOM split-retry."""
