"""Published formats in and out: Hugging Face BERT folders and torchvision / timm ResNet state_dicts.

  state_dict.py    .safetensors and torch.save files as NumPy arrays, without torch
  torch_resnet.py  torchvision / timm ResNet-18/34/50/101 state_dicts in (read) and out (write, .safetensors)
"""
