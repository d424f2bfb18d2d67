"""Pieces that methods share: GAN losses, latent feature heads, the student forward and re-noising."""
