"""The mini world: a photo corpus from installed packages and small trained parts shipped in
spurgen/assets/mini/ (docs/mini_world.md). Its numbers show the mechanism, not Stable Diffusion results."""
