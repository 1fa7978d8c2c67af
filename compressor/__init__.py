"""compressor: PyTorch model compression toolkit."""
