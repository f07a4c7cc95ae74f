#!/usr/bin/env python3
"""Writes the synthetic study's frozen model and data (methods.md §4.6), independently of loraC.

Python 3 standard library only; every number follows from SEED, so rerunning reproduces the
committed files byte for byte:

    python3 examples/synthetic/make_data.py [OUT_DIR]     # OUT_DIR defaults to this directory

The recipe (all draws from one random.Random(SEED), in this order):

1. W0 [8, 32] and b [8]: uniform(-1/sqrt(32), 1/sqrt(32)), torch.nn.Linear(32, 8)'s default
   init. Stored as f32 in model/model.safetensors (`linear.weight`, `linear.bias`) with
   model/config.json {"model_type": "linear", "in_features": 32, "out_features": 8}.
2. The teacher's update, rank 4: dW = U V^T / sqrt(4 * 32), U [8, 4] and V [32, 4] standard
   normal, so that (dW x)_j has variance about 1 for x ~ N(0, I).
3. TRAIN then DEV examples: x ~ N(0, I_32) rounded to 4 decimals, then
   y = (W0 + dW) x + b + NOISE * N(0, I_8) rounded to 4 decimals, where W0 and b are the
   f32-rounded stored values.

The frozen layer alone leaves the mean squared error E|dW x|^2 / 8 + NOISE^2, about 1.0; the
best the adapters can reach is NOISE^2 = 0.01 plus the rounding.
"""

import json
import math
import os
import random
import struct
import sys

SEED = 0
IN, OUT, RANK = 32, 8, 4
TRAIN, DEV = 512, 256
NOISE = 0.1


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


def safetensors(path, tensors):
    """tensors: list of (name, shape, flat f32 values), written in order."""
    header, blobs, offset = {}, [], 0
    for name, shape, values in tensors:
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(SEED)
    bound = 1 / math.sqrt(IN)
    w0 = [[f32(rng.uniform(-bound, bound)) for _ in range(IN)] for _ in range(OUT)]
    b = [f32(rng.uniform(-bound, bound)) for _ in range(OUT)]
    u = [[rng.gauss(0, 1) for _ in range(RANK)] for _ in range(OUT)]
    v = [[rng.gauss(0, 1) for _ in range(RANK)] for _ in range(IN)]
    scale = 1 / math.sqrt(RANK * IN)
    w = [[w0[j][i] + scale * sum(u[j][r] * v[i][r] for r in range(RANK)) for i in range(IN)]
         for j in range(OUT)]

    os.makedirs(os.path.join(here, "model"), exist_ok=True)
    with open(os.path.join(here, "model", "config.json"), "w") as f:
        json.dump({"model_type": "linear", "in_features": IN, "out_features": OUT, "bias": True},
                  f, indent=2)
        f.write("\n")
    safetensors(os.path.join(here, "model", "model.safetensors"),
                [("linear.bias", [OUT], b),
                 ("linear.weight", [OUT, IN], [x for row in w0 for x in row])])

    for name, n in (("train.jsonl", TRAIN), ("dev.jsonl", DEV)):
        with open(os.path.join(here, name), "w") as f:
            for _ in range(n):
                x = [round(rng.gauss(0, 1), 4) for _ in range(IN)]
                y = [sum(w[j][i] * x[i] for i in range(IN)) + b[j] + NOISE * rng.gauss(0, 1)
                     for j in range(OUT)]
                rec = {"x": x, "y": [round(t, 4) for t in y]}
                f.write(json.dumps(rec, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
