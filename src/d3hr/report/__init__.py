"""Reports: image grids of a distilled set and the HTML report of a run."""

from d3hr.report.grid import image_grid
from d3hr.report.html import write_report

__all__ = ["image_grid", "write_report"]
