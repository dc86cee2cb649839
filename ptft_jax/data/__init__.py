"""Images and how every run's data reaches the devices.

  sources.py   embedded sets, TFDS images, the user's files (custom.py): `load(cfg)` -> Dataset
  augment.py   image sizing and training augmentation on the host (NumPy, Pillow)
  pipeline.py  the epoch order (a function of seed and step), grain host batches, padded evaluation batches
  feed.py      residency, steps per call, the call plan, the device feed: what the loop iterates, and the evaluator

Text sources live in ptft_jax/text/; the types both share in ptft_jax/dataset.py.
"""
