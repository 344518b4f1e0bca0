"""φ, the feature extractor both parties share. It must keep domain/style information.

ECOS senses the client's *domain*: a φ trained to classify the pooled data learns
to ignore style and makes a poor φ (ECOS.md). The defaults here are a seeded
random-init CNN and PCA-reduced pixels, both style-preserving and offline.

    base.py       FeatureExtractor (what every φ is) and the helpers the kinds share
    spec.py       the bounded fields of a φ spec, checked before anything is built
    pca.py        kinds pca and hog          backbone.py   kind timm
    registry.py   kind concat, and the kinds by name and by class path (phi_from_spec, spec_from_config)
    ecos_pl.phi_file   a φ as a file (spec, tensors, fingerprint), for the programs
"""

from ecos_pl.phi.backbone import TimmFeatures
from ecos_pl.data.loaders import images_to_tensor
from ecos_pl.phi.base import FeatureExtractor
from ecos_pl.phi.pca import HOGFeatures, PCAPixels, PCAProjected
from ecos_pl.phi.registry import PHI_KINDS, PHI_TARGETS, ConcatFeatures, check_phi_spec, phi_from_spec, spec_from_config
from ecos_pl.phi.spec import check_phi_image_size

__all__ = [
    "PHI_KINDS", "PHI_TARGETS", "ConcatFeatures", "FeatureExtractor", "HOGFeatures", "PCAPixels", "PCAProjected",
    "TimmFeatures", "check_phi_image_size", "check_phi_spec", "images_to_tensor", "phi_from_spec", "spec_from_config",
]
