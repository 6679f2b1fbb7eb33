"""Earth-observation scenes in, geography out: GeoTIFF/COG and STAC scenes cut into encoder-ready tiles."""
