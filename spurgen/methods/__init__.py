"""How a run makes its images (the `method` group, conf/method): what fine-tuning trains (tuning.py) and how the
sampler is steered (guidance.py). spurgen/stages build a Method from `cfg.method` and hand its parts on."""

from spurgen.methods.guidance import GuidedSampling, SFSLGuidance
from spurgen.methods.method import Method
from spurgen.methods.tuning import FullTuning, TextualInversion

__all__ = ["FullTuning", "GuidedSampling", "Method", "SFSLGuidance", "TextualInversion"]
