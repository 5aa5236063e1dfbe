"""Acting with trained policies: the fast actor and the diffusion baseline, evaluation rollouts, latency, export."""
