"""Exports a detector to LiteRT (.tflite, builtin ops only, NMS inside) and runs it with ai_edge_litert.

    python examples/export_tflite.py                              # a tiny RetinaNet -> retinanet_tiny.tflite
    python examples/export_tflite.py --model run/final.keras --quantization float16

Compares the LiteRT detections with the Keras model's on the same images.
"""

import argparse

import numpy as np

import kdet


def run_litert(path: str, images: np.ndarray) -> dict:
    """Runs the exported signature one image at a time with the ai_edge_litert interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner()
    outputs = [runner(**{runner.get_input_details().popitem()[0]: image[None].astype(np.float32)})
               for image in images]
    return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .keras file or zoo name (default: a tiny RetinaNet)")
    parser.add_argument("--out", default="retinanet_tiny.tflite")
    parser.add_argument("--quantization", choices=["float16", "dynamic_int8"], default=None)
    parser.add_argument("--fast", action="store_true", help="CI mode: untrained tiny model, 2 images")
    args = parser.parse_args(argv)

    if args.model:
        model = kdet.load(args.model)
    else:
        model = kdet.models.RetinaNet(num_classes=3, backbone="tiny", image_size=128)
        if not args.fast:
            x, y = kdet.data.synthetic_arrays(200, 128, seed=0)
            model.compile()
            model.fit(x, y, batch_size=8, epochs=30, verbose=0)
    path = model.export(args.out, format="litert", quantization=args.quantization)
    size = model.image_size or (128, 128)
    images = kdet.data.synthetic_arrays(2, size, split="test")[0].astype(np.float32)
    lite = run_litert(str(path), images)
    keras_out = {k: np.asarray(v) for k, v in model.predict(images, verbose=0).items()}
    n = int(min(lite["num_detections"][0], keras_out["num_detections"][0]))
    diff = np.abs(lite["boxes"][0, :n] - keras_out["boxes"][0, :n]).max() if n else 0.0
    print(f"wrote {path}; LiteRT detections per image {lite['num_detections'].tolist()}, "
          f"Keras {keras_out['num_detections'].tolist()}; max box difference {diff:.4f} px")
    return {"litert": lite, "keras": keras_out}


if __name__ == "__main__":
    main()
