"""The error of a scene that cannot be tiled as given."""


class SceneError(ValueError):
    """A raster file, STAC item or folder that cannot become a scene; the message names
    the file (and the STAC asset) and the problem: a missing file, a file GDAL cannot
    read, no CRS, too few bands, a band index out of range, an unknown asset key, bands
    on grids that cannot be combined, an unsupported pixel type."""
