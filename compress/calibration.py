"""Which training images calibrate a model's int8 ranges: the same for compress/quantize.py
and for TFLite's int8 conversion in cifar10_export.py, so the two are compared on equal terms.
"""

import dataclasses

import numpy as np

import cifar10_input
import cifar10_records

METHODS = ('minmax', 'percentile')


@dataclasses.dataclass(frozen=True)
class Calibration:
  images: int = 500  # training images, eval preprocessing
  method: str = 'minmax'  # or 'percentile' (METHODS)
  percentile: float = 99.99  # 'percentile': range from the (100 - p)th to the pth percentile
  seed: int = 0  # which training images


def calibration_images(train_split, calibration, image_size):
  """`calibration.images` training images picked by the seed, centrally cropped, standardized.

  Returns:
    float32 NumPy [calibration.images, image_size, image_size, 3].
  """
  rng = np.random.default_rng(calibration.seed)
  index = np.sort(rng.choice(len(train_split), calibration.images, replace=False))
  subset = cifar10_records.Split(images=train_split.images[index],
                                 labels=train_split.labels[index])
  return cifar10_input.eval_images(subset, image_size).numpy()
