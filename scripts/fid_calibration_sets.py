#!/usr/bin/env python3
"""Image folders of known quality for calibrating FID/KID on Fashion-MNIST (docs/fid.md).

Writes N images each (PNG, 8-bit grey, 28x28) into OUT/<name>/ for:
  real        N training images (the eval reference is the test split: real vs real)
  blur3       the same images, 3x3 box blur (edges replicated)
  blur5       the same images, 5x5 box blur
  noise05     the same images plus Gaussian pixel noise of std 0.05 (in [0, 1] units), clipped
  noise10     std 0.10
  noise20     std 0.20
  shuffled    the same images with their pixels permuted by one fixed permutation (structure gone,
              the pixel histogram kept)
  stratified  N training images, N/10 of each class (the first of each in file order): the real-data
              floor for class-conditional samples drawn with labels i mod 10
Only the Python standard library is used (gzip, zlib, random), so it runs anywhere.
  python3 scripts/fid_calibration_sets.py OUT [N] [IDX_DIR]
  python3 scripts/fid_calibration_sets.py --labels N [IDX_DIR]
      prints the class labels of the `real` set (the first N training images), space-separated:
      class-conditional samples drawn with them (`diffuse sample --label ...`) have the real set's
      class mix, so their FID compares with its score
"""
import gzip
import os
import random
import struct
import sys
import zlib


def read_idx_images(path, n):
    with gzip.open(path, "rb") as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051 or rows != 28 or cols != 28:
            raise SystemExit(f"{path}: not an IDX image file of 28x28 images")
        n = min(n, count)
        data = f.read(n * rows * cols)
    return [list(data[i * 784:(i + 1) * 784]) for i in range(n)]


def read_idx_labels(path):
    with gzip.open(path, "rb") as f:
        magic, count = struct.unpack(">II", f.read(8))
        if magic != 2049:
            raise SystemExit(f"{path}: not an IDX label file")
        labels = f.read(count)
    if len(labels) != count:
        raise SystemExit(f"{path}: {count} labels announced, {len(labels)} present")
    return list(labels)


def stratified(idx, n, classes=10):
    """n training images, n / classes of each class, the first of each class in file order."""
    labels = read_idx_labels(os.path.join(idx, "train-labels-idx1-ubyte.gz"))
    per = n // classes
    chosen, taken = [], [0] * classes
    for i, y in enumerate(labels):
        if y < classes and taken[y] < per:
            taken[y] += 1
            chosen.append(i)
    if min(taken) < per:
        raise SystemExit(f"{idx}: fewer than {per} training images in some class ({taken})")
    images = read_idx_images(os.path.join(idx, "train-images-idx3-ubyte.gz"), max(chosen) + 1)
    return [images[i] for i in chosen]


def write_png(path, pixels, w=28, h=28):
    raw = b"".join(b"\x00" + bytes(pixels[r * w:(r + 1) * w]) for r in range(h))
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def box_blur(p, k):
    r = k // 2
    out = []
    for y in range(28):
        for x in range(28):
            s = 0
            for dy in range(-r, r + 1):
                yy = min(max(y + dy, 0), 27)
                for dx in range(-r, r + 1):
                    s += p[yy * 28 + min(max(x + dx, 0), 27)]
            out.append(int(s / (k * k) + 0.5))
    return out


def write_set(out, name, images):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    for i, p in enumerate(images):
        write_png(os.path.join(d, f"{i:06d}.png"), p)
    print(f"{d}: {len(images)} images")


def noised(p, std, rng):
    return [min(255, max(0, int(v + rng.gauss(0.0, std * 255.0) + 0.5))) for v in p]


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    if sys.argv[1] == "--labels":
        idx = sys.argv[3] if len(sys.argv) > 3 else "/usr/share/datasets/fashion-mnist"
        labels = read_idx_labels(os.path.join(idx, "train-labels-idx1-ubyte.gz"))
        print(" ".join(str(y) for y in labels[:int(sys.argv[2])]))
        return
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    idx = sys.argv[3] if len(sys.argv) > 3 else "/usr/share/datasets/fashion-mnist"
    images = read_idx_images(os.path.join(idx, "train-images-idx3-ubyte.gz"), n)
    rng = random.Random(0)
    perm = list(range(784))
    rng.shuffle(perm)
    sets = {
        "real": lambda p: p,
        "blur3": lambda p: box_blur(p, 3),
        "blur5": lambda p: box_blur(p, 5),
        "noise05": lambda p: noised(p, 0.05, rng),
        "noise10": lambda p: noised(p, 0.10, rng),
        "noise20": lambda p: noised(p, 0.20, rng),
        "shuffled": lambda p: [p[j] for j in perm],
    }
    for name, fn in sets.items():
        write_set(out, name, [fn(p) for p in images])
    write_set(out, "stratified", stratified(idx, n))


if __name__ == "__main__":
    main()
