"""Benchmarks of ptft_jax against plain PyTorch peers; run `python -m bench [--quick]` (see bench/run.py)."""
