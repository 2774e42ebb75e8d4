"""Steer a pretrained model without retraining it: guidance wrappers in the model currency (``wrappers``:
classifier, classifier-free, energy, discriminator), discriminator training (``discriminator``) and rejection with a
discriminator's density-ratio estimate (``rejection``)."""
from .discriminator import guidance_from_spec
from .wrappers import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    DiscriminatorGuidance,
    EnergyGuidance,
    GuidedModel,
    check_window,
    parse_window,
)

__all__ = ["GuidedModel", "DiscriminatorGuidance", "ClassifierGuidance", "ClassifierFreeGuidance", "EnergyGuidance",
           "check_window", "parse_window", "guidance_from_spec"]
