"""Reports: image grids of a distilled set."""
