"""The algorithms: the diffusion behavior model (stage 1), the IQL critic (stage 2), SRPO extraction (stage 3),
the AWR and BC baselines, their losses, and loading trained networks back."""
