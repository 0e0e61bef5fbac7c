"""Fixtures for the generator tests."""

import pytest

from d3hr.generator import save_generator


@pytest.fixture
def pretrained_dir(tiny_generator, tmp_path):
    """The tiny 10-label generator saved in the diffusers layout, as a pretrained one would be."""
    path = tmp_path / "gen"
    tiny_generator.vae.register_to_config(scaling_factor=0.5)
    save_generator(tiny_generator, path)
    return path
