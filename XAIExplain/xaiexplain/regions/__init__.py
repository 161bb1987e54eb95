"""Anatomical regions: label maps with names, SLIC supervoxels, and the Harvard-Oxford atlas registered
into the subject; region tables ranked by a map."""
from .sets import (SUPERVOXELS, Regions, harvard_oxford_regions, label_regions, paint, read_region_names, region_table,
                   resolve_regions, supervoxel_regions)

__all__ = ["SUPERVOXELS", "Regions", "harvard_oxford_regions", "label_regions", "paint", "read_region_names", "region_table",
           "resolve_regions", "supervoxel_regions"]
