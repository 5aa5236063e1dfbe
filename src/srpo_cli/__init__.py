"""srpo: Score Regularized Policy Optimization (Chen et al., ICLR 2024) for offline RL."""

__version__ = "0.1.0"
