"""The Cream search: path sampler, prioritized board, meta matching network, training and selection."""
