"""Z-Image-Turbo on Ray Serve: ingress, GPU deployment, batching and model loading."""
