"""Converts the original MTCNN weights shipped by the ``mtcnn`` PyPI package to kdet.

The ``mtcnn`` package (MIT, Ivan de Paz Centeno) redistributes the authors'
Caffe weights (Zhang et al. 2016, MIT) as joblib/lz4 pickles
``mtcnn/assets/weights/{pnet,rnet,onet}.lz4``: each a list of NumPy arrays
in the order of its Keras layers (conv kernel, bias, PReLU slopes, ...).
kdet's networks (``networks.py``) have the same layers in the same order, so
the conversion is a checked one-to-one copy, written as Keras
``.weights.h5`` files.

Command (run once; the result is committed under ``kdet/assets/mtcnn``)::

    python -m kdet.models.mtcnn.convert [--source DIR] [--out kdet/assets/mtcnn]
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from kdet.models.mtcnn.networks import build_onet, build_pnet, build_rnet

_BUILDERS = {"pnet": build_pnet, "rnet": build_rnet, "onet": build_onet}
# Layer order of the mtcnn package's networks (mtcnn/network/*.py), which is the
# order of the arrays in its weight files.
_LAYER_ORDER = {
    "pnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4-1", "conv4-2"],
    "rnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4",
             "fc5-1", "fc5-2"],
    "onet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4",
             "fc5", "prelu5", "fc6-1", "fc6-2", "fc6-3"],
}


def package_weights_dir() -> pathlib.Path:
    """``mtcnn/assets/weights`` of the installed ``mtcnn`` package."""
    try:
        import mtcnn
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ValueError("The conversion reads the `mtcnn` package's weights: pip install mtcnn") from err
    return pathlib.Path(mtcnn.__file__).parent / "assets" / "weights"


def read_package_weights(path: str | pathlib.Path) -> list[np.ndarray]:
    """Reads one ``.lz4`` weight list of the mtcnn package (a joblib pickle)."""
    import joblib  # a dependency of the mtcnn package; only needed to convert

    weights = joblib.load(str(path))
    if not isinstance(weights, list) or not all(isinstance(w, np.ndarray) for w in weights):
        raise ValueError(f"{path} is not a list of NumPy arrays; is it an mtcnn weight file?")
    return weights


def convert_network(name: str, source: str | pathlib.Path):
    """Builds kdet's ``name`` network ("pnet", "rnet", "onet") with the package's weights."""
    if name not in _BUILDERS:
        raise ValueError(f"name must be one of {sorted(_BUILDERS)}; received {name!r}.")
    net = _BUILDERS[name]()
    arrays = read_package_weights(source)
    variables = [v for layer in _LAYER_ORDER[name] for v in net.get_layer(layer).weights]
    if len(variables) != len(net.weights):
        raise ValueError(f"kdet's {name} has weights outside the known layers; update _LAYER_ORDER.")
    if len(arrays) != len(variables):
        raise ValueError(f"{source}: {len(arrays)} arrays, but kdet's {name} has {len(variables)} weights.")
    for var, arr in zip(variables, arrays):
        if tuple(var.shape) != arr.shape:
            raise ValueError(f"{source}: shape {arr.shape} does not fit {var.path} {tuple(var.shape)}.")
        var.assign(arr.astype(np.float32))
    return net


def convert(source_dir: str | pathlib.Path | None = None,
            out_dir: str | pathlib.Path = "kdet/assets/mtcnn") -> list[pathlib.Path]:
    """Converts the three networks; returns the written ``*.weights.h5`` paths."""
    source_dir = pathlib.Path(source_dir) if source_dir else package_weights_dir()
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in _BUILDERS:
        net = convert_network(name, source_dir / f"{name}.lz4")
        path = out_dir / f"{name}.weights.h5"
        net.save_weights(str(path))
        written.append(path)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=None, help="folder of pnet/rnet/onet.lz4 (default: the mtcnn package's)")
    parser.add_argument("--out", default="kdet/assets/mtcnn", help="output folder")
    args = parser.parse_args(argv)
    for path in convert(args.source, args.out):
        print(path)


if __name__ == "__main__":
    main()
