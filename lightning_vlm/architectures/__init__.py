"""Architectures: UnifiedVLM and its image-output plugins (discrete, regression, diffusion)."""
