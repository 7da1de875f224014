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


def calibration_split(train_split, calibration):
  """The `calibration.images` training images picked by the seed, as they are (uint8)."""
  rng = np.random.default_rng(calibration.seed)
  index = np.sort(rng.choice(len(train_split), calibration.images, replace=False))
  return cifar10_records.Split(images=train_split.images[index],
                               labels=train_split.labels[index])


def calibration_images(train_split, calibration, image_size):
  """The images of calibration_split, centrally cropped and standardized.

  Returns:
    float32 NumPy [calibration.images, image_size, image_size, 3].
  """
  return cifar10_input.eval_images(calibration_split(train_split, calibration),
                                   image_size).numpy()
