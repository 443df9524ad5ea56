"""Data: reference images (plain folder or Spurious ImageNet), prior (class) images, the DreamBooth dataset."""
