"""Generators: a VAE and a class-conditional DiT, pretrained (diffusers layout) or trained here."""

from d3hr.generator.model import Generator, build_small, load_generator, save_generator

__all__ = ["Generator", "build_small", "load_generator", "save_generator"]
