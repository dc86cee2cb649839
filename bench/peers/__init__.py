"""PyTorch peers of the bench workloads (imported only when torch is installed)."""
