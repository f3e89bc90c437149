"""Imports every defense module so that each registers itself."""

from fl_cem.defenses import adversarial, distcorr, masking, patrol, plain  # noqa: F401
