"""Conditional Entropy Maximization (Xia et al., CVPR 2025): mixture, loss ``L_C`` and bounds.

``ConditionalEntropy`` is the one implementation both the centralized trainer and the
federated client/server call; docs/CEM.md explains the choices and the official variant.
"""

from fl_cem.cem.entropy import ConditionalEntropy
from fl_cem.cem.kmeans import combine_centres
from fl_cem.cem.stats import Mixture, MixtureStats

__all__ = ["ConditionalEntropy", "Mixture", "MixtureStats", "combine_centres"]
