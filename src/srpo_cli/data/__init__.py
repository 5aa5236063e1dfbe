"""Datasets: the local Minari store, fetching and building datasets, observation spaces, and transitions as
tensors with batch sampling."""
