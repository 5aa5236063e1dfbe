"""Networks: the MLPs and ensembles of the critic and actor, the diffusion behavior model, the actor's compiled
single-observation kernel, and torch.compile with an eager fallback."""
