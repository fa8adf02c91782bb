"""Reading images into the RGB uint8 arrays every kdet detector takes."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np


def load_image(image: Any) -> np.ndarray:
    """Returns one image as an (H, W, 3) RGB array (uint8 or float 0..255).

    Args:
        image: a path (str or PathLike), a PIL image, or an array of shape
            (H, W), (H, W, 1), (H, W, 3) or (H, W, 4). Grayscale is repeated to
            three channels and RGBA drops its alpha channel.

    Returns:
        (H, W, 3) NumPy array, uint8 for files and PIL images, else the
        array's own dtype.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the array has an unsupported shape or dtype.
    """
    if isinstance(image, (str, os.PathLike)):
        path = pathlib.Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image file not found: {path}")
        from PIL import Image

        with Image.open(path) as pil:
            return np.asarray(pil.convert("RGB"))
    if type(image).__module__.startswith("PIL."):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"image must hold numeric pixels in 0..255; received dtype {arr.dtype}.")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(
            f"image must have shape (height, width[, channels]); received {arr.shape}. "
            "For a batch use model.predict()."
        )
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        return arr[..., :3]
    if arr.shape[-1] != 3:
        raise ValueError(
            f"image must have 1 (grayscale), 3 (RGB) or 4 (RGBA) channels; received {arr.shape[-1]}."
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image is empty: shape {arr.shape}.")
    return arr
