"""The model: loading, memory placement, compile/FP8, text encoding and the staged runner (runs on the GPU replica)."""
