"""Which files are images, for every command (TensorFlow-free: the ground station uses it).

JPEG, PNG, BMP and GIF are decoded as encoded images; GeoTIFF/TIFF files are read with
rasterio; 16-bit PNGs and TIFFs pass through the radiometric contract
(`rs_hashing.geo.radiometry`). Any other file is not an image: commands that list
folders skip it and say how many they skipped; a file named explicitly is refused.
"""

ENCODED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
RASTER_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = ENCODED_EXTENSIONS + RASTER_EXTENSIONS


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)
