"""Published formats in and out, without torch or transformers (`python -m ptft_jax.convert` / `.export` use them):

  state_dict.py    .safetensors and torch.save files as NumPy arrays (a restricted unpickler: tensors only)
  hf_bert.py       transformers BERT folders <-> ptft_jax's BERT tree (read / write)
  torch_resnet.py  torchvision / timm ResNet state_dicts <-> ptft_jax's ResNet tree (read / write)
  imported.py      `Imported`: what a reader hands to the graft (weights, model fields, file, sha256)
"""
