"""ucloud-imagescanner. Image-scanner: turns requested files into VM images, safely."""
