"""The objective of METHOD.md, one equation per file:

- diffusion.py  L_inst and L_prior (DreamBooth with prior preservation), the denoising target
- sfsl.py       z0_hat, x0_hat, phi, m, L_SFSL (spurious feature similarity loss; owns f, the decode, m)
- objective.py  L = L_inst + lambda_prior * L_prior + lambda_sfsl * L_SFSL
"""

from spurgen.losses.diffusion import denoising_losses, denoising_target
from spurgen.losses.objective import LossOutput, SpurgenObjective, StepTensors
from spurgen.losses.sfsl import SpuriousFeatureSimilarityLoss, decode_to_unit, predict_z0

__all__ = [
    "LossOutput",
    "SpurgenObjective",
    "SpuriousFeatureSimilarityLoss",
    "StepTensors",
    "decode_to_unit",
    "denoising_losses",
    "denoising_target",
    "predict_z0",
]
