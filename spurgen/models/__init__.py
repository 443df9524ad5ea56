"""Model parts: Stable Diffusion components (real or tiny) and frozen feature extractors / classifiers."""
