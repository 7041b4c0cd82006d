#!/usr/bin/env python3
"""Make tunelab's affine (n-bit, per tensor / per channel / group-wise) quantization fixtures with PyTorch.

Every number in ``tests/fixtures/quant/affine.safetensors`` comes from PyTorch's own CPU code:
``torch.ao.quantization`` observers (``MinMaxObserver`` / ``PerChannelMinMaxObserver``) choose the
scale and zero point, ``torch.quantize_per_tensor`` / ``torch.quantize_per_channel`` (quint8 for
asymmetric, qint8 for symmetric) give the integer codes, and ``Tensor.dequantize()`` (8 bits) or
``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine`` with
``quant_min``/``quant_max`` (2..7 bits) give the dequantized weight.  Tunelab's
``quant::affine`` must match all of them bit for bit (``tests/quant_affine.rs``).

Conventions this pins down (slide 12 is silent on them; tunelab follows torch):

* the observed range always includes 0: ``min_neg = min(min, 0)``, ``max_pos = max(max, 0)``;
* ``scale = (max_pos - min_neg) / (quant_max - quant_min)`` in float32, then ``max(scale, eps)``
  with ``eps = torch.finfo(float32).eps = 2**-23``; symmetric:
  ``scale = max(-min_neg, max_pos) / ((quant_max - quant_min) / 2)``;
* ``zero_point = clamp(quant_min - round(min_neg / scale), quant_min, quant_max)`` (float32 division,
  ``torch.round`` = round half to even); symmetric: 0;
* ``q = clamp(zero_point + round(w * (1.0f / scale)), quant_min, quant_max)`` -- a multiply by the
  float32 reciprocal, not a division (fbgemm ``Quantize<T, LEGACY=false>``, ATen ``quantize_val``,
  the fake-quant kernels), round half to even, zero point added AFTER rounding;
* ``w_hat = (q - zero_point) * scale`` in float32.

Group-wise (slide 17) has no torch.ao observer; a ``[out, in]`` weight with group size ``g``
(``in % g == 0`` here) is reshaped to ``[out * in / g, g]`` and quantized per channel (= per group),
which is exactly group-wise quantization along the input dimension.

For n < 8 bits the codes come from the 8-bit quantizer clamped to ``[quant_min, quant_max]``
(``clamp(clamp(x, 0, 255), 0, 15) == clamp(x, 0, 15)`` as 0 <= quant_min <= quant_max <= 255; for
qint8 likewise), and the script checks them against the fake-quant output:
``fake_quant == (codes - zero_point) * scale`` bit for bit.

Setup (one time; CPU only)::

    python3 -m venv /tmp/pyref/venv
    /tmp/pyref/venv/bin/pip install torch==2.15.0 numpy==2.4.6 safetensors==0.8.0

Run (from the repo root; a few seconds)::

    /tmp/pyref/venv/bin/python scripts/ref/make_affine_fixtures.py [--out tests/fixtures/quant]

Writes ``affine.safetensors`` (< 100 KB).  Per case ``<case>.<field>``:
``input`` F32[out, in], ``codes`` I16[out, in] (the integer Q(w): 0..2^n-1 for asymmetric,
-(2^(n-1)-1)..2^(n-1)-1 for symmetric), ``scale`` F32 and ``zero_point`` I16 of shape [1]
(per tensor), [out] (per channel) or [out, in/g] (group-wise), ``dequant`` F32[out, in].
The safetensors metadata key ``fixture`` holds one JSON object: versions, the command, ``cases``
(name, bits, symmetric, granularity, group_size, quant_min, quant_max, shape, which torch ops made
it) and ``rmse``: the
RMSE of several schemes on a 576x1536 N(0,1) matrix drawn by ``splitmix_normal`` below, a generator
simple enough to re-implement bit-exactly in Rust (splitmix64 + Box-Muller in float64, rounded to
float32), so the Rust test can recompute the same matrix and compare RMSE with torch's.
"""

import argparse
import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

f32 = np.float32
FAILED = []


def check(what, ok):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        FAILED.append(what)


def bits_equal(a, b):
    a, b = np.ascontiguousarray(a, f32), np.ascontiguousarray(b, f32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def qrange(bits, symmetric):
    if symmetric:
        m = 2 ** (bits - 1) - 1
        return -m, m, torch.qint8
    return 0, 2 ** bits - 1, torch.quint8


def torch_affine(w, bits, symmetric, granularity, group_size=None):
    """Quantize a float32 [out, in] numpy matrix with torch; returns a dict of numpy arrays + meta."""
    out_f, in_f = w.shape
    qmin, qmax, qdtype = qrange(bits, symmetric)
    if granularity == "group":
        assert in_f % group_size == 0
        x = w.reshape(out_f * (in_f // group_size), group_size)
    else:
        x = w
    xt = torch.from_numpy(np.ascontiguousarray(x))
    per_channel = granularity != "tensor"
    if per_channel:
        qscheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=qdtype, qscheme=qscheme,
                                       quant_min=qmin, quant_max=qmax)
    else:
        qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        obs = MinMaxObserver(dtype=qdtype, qscheme=qscheme, quant_min=qmin, quant_max=qmax)
    obs(xt)
    scale, zp = obs.calculate_qparams()
    assert scale.dtype == torch.float32
    if per_channel:
        q = torch.quantize_per_channel(xt, scale.double(), zp.long(), 0, qdtype)
        fq = torch.fake_quantize_per_channel_affine(xt, scale, zp.int(), 0, qmin, qmax)
    else:
        q = torch.quantize_per_tensor(xt, float(scale), int(zp), qdtype)
        fq = torch.fake_quantize_per_tensor_affine(xt, float(scale), int(zp), qmin, qmax)
    codes = q.int_repr().to(torch.int32).clamp(qmin, qmax)
    zp_b = zp.to(torch.int32).reshape(-1, 1) if per_channel else zp.to(torch.int32).reshape(1, 1)
    sc_b = scale.reshape(-1, 1) if per_channel else scale.reshape(1, 1)
    manual = ((codes - zp_b).to(torch.float32) * sc_b).numpy()
    fq = fq.numpy()
    ok = bits_equal(fq, manual)
    if bits == 8:
        ok &= bits_equal(q.dequantize().numpy(), fq)
    shape_sz = {"tensor": [1], "channel": [out_f], "group": [out_f, in_f // (group_size or 1)]}[granularity]
    return {
        "codes": codes.numpy().reshape(out_f, in_f),
        "scale": scale.numpy().astype(f32).reshape(shape_sz),
        "zero_point": zp.numpy().astype(np.int64).reshape(shape_sz),
        "dequant": fq.reshape(out_f, in_f),
        "consistent": ok,
        "ops": ("quantize_per_channel" if per_channel else "quantize_per_tensor")
        + f"({qdtype}).int_repr()"
        + ("" if bits == 8 else f".clamp({qmin}, {qmax})")
        + "; "
        + ("dequantize()" if bits == 8 else
           ("fake_quantize_per_channel_affine" if per_channel else "fake_quantize_per_tensor_affine")
           + f"(quant_min={qmin}, quant_max={qmax})"),
        "quant_min": qmin,
        "quant_max": qmax,
    }


def splitmix_normal(rows, cols, seed):
    """N(0,1) float32 [rows, cols]: splitmix64 -> two uniforms -> Box-Muller (cos branch) in float64.

    Reproduced in Rust by `splitmix_normal` in tests/quant_affine.rs; both use the platform libm's
    float64 log and cos (glibc here), so the float32 matrices are identical.
    """
    n = rows * cols
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)
    state = np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15) * np.arange(1, 2 * n + 1, dtype=np.uint64)
    z = state & mask
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = ((z >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53   # (0, 1]
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    return (r * np.cos(2.0 * np.pi * u2)).astype(f32).reshape(rows, cols)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/quant")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    # torch 2.15 warns that quantized dtypes (quint8/qint8) are deprecated; they are what we compare to.
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    rng = np.random.default_rng(20261212)

    def normal(shape, std=1.0, mean=0.0):
        return (rng.standard_normal(shape, dtype=f32) * f32(std) + f32(mean)).astype(f32)

    cases = []   # (name, input, bits, symmetric, granularity, group_size)
    cases.append(("asym8_tensor", normal((8, 48), 0.5, 0.2), 8, False, "tensor", None))
    w = normal((8, 48), 0.3)
    w[1] *= 5.0                 # rows on different scales
    w[2] = 0.0                  # all-zero row: scale = eps, zero_point = 0
    w[3] = np.abs(w[3]) + 0.5   # positive-only row: min_neg = 0 -> zero_point = 0
    w[4] = -np.abs(w[4])        # negative-only row: max_pos = 0 -> zero_point = 255
    cases.append(("asym8_channel", w, 8, False, "channel", None))
    cases.append(("sym8_tensor", normal((8, 48), 0.7), 8, True, "tensor", None))
    cases.append(("sym8_channel", w.copy(), 8, True, "channel", None))
    cases.append(("asym8_g16", normal((8, 48)), 8, False, "group", 16))
    cases.append(("asym4_tensor", normal((8, 48)), 4, False, "tensor", None))
    cases.append(("asym4_g16", normal((8, 48)), 4, False, "group", 16))
    cases.append(("asym4_channel", w.copy(), 4, False, "channel", None))
    cases.append(("asym2_channel", normal((8, 48), 0.1), 2, False, "channel", None))
    cases.append(("asym3_g24", normal((8, 48)), 3, False, "group", 24))
    cases.append(("asym5_tensor", normal((8, 48)), 5, False, "tensor", None))
    cases.append(("asym6_g24", normal((8, 48), 2.0), 6, False, "group", 24))
    cases.append(("asym7_channel", normal((8, 48)), 7, False, "channel", None))
    cases.append(("sym4_channel", w.copy(), 4, True, "channel", None))
    cases.append(("sym4_g16", normal((8, 48)), 4, True, "group", 16))
    cases.append(("sym3_tensor", normal((8, 48)), 3, True, "tensor", None))
    cases.append(("sym2_g24", normal((8, 48)), 2, True, "group", 24))
    cases.append(("sym6_channel", normal((8, 48)), 6, True, "channel", None))

    # Ties: scale is a power of two and the zero point is ODD, so w * (1/scale) lands exactly on
    # k + 0.5 and "zero_point + round(x)" (torch) differs from "round(zero_point + x)".
    # 8 bits: min = -127/128, max = 1 -> scale = (255/128)/255 = 2^-7, zero_point = 127.
    k = np.arange(-20, 20, dtype=f32)
    t8 = np.concatenate([(k + f32(0.5)) / f32(128), np.nextafter((k + f32(0.5)) / f32(128), f32(9)),
                         np.nextafter((k + f32(0.5)) / f32(128), f32(-9))]).astype(f32)
    t8 = np.concatenate([t8, np.array([-127 / 128, 1.0, 0.0, -0.0], f32),
                         np.zeros(124, f32)]).reshape(2, 124)
    cases.append(("ties8_tensor", t8, 8, False, "tensor", None))
    # 4 bits: min = -7/8, max = 1 -> scale = (15/8)/15 = 2^-3, zero_point = 7.
    k4 = np.arange(-7, 8, dtype=f32)
    t4 = np.concatenate([(k4 + f32(0.5)) / f32(8), np.nextafter((k4 + f32(0.5)) / f32(8), f32(9)),
                         np.nextafter((k4 + f32(0.5)) / f32(8), f32(-9)),
                         np.array([-7 / 8, 1.0, 0.0], f32)]).astype(f32).reshape(3, 16)
    cases.append(("ties4_tensor", t4, 4, False, "tensor", None))
    # Symmetric 8-bit ties: absmax = 127/64 -> scale = 2^-6 exactly; w = (k + 0.5) / 64.
    ts = np.concatenate([(k + f32(0.5)) / f32(64), np.array([127 / 64, -1.0, 0.0, 0.0], f32)])
    cases.append(("ties_sym8_tensor", ts.astype(f32).reshape(4, 11), 8, True, "tensor", None))

    tensors, meta = {}, []
    for name, w, bits, sym, gran, g in cases:
        r = torch_affine(w, bits, sym, gran, g)
        check(f"{name}: fake_quant == (codes - zero_point) * scale == dequantize()", r["consistent"])
        tensors[f"{name}.input"] = torch.from_numpy(np.ascontiguousarray(w))
        tensors[f"{name}.codes"] = torch.from_numpy(r["codes"].astype(np.int16))
        tensors[f"{name}.scale"] = torch.from_numpy(r["scale"])
        tensors[f"{name}.zero_point"] = torch.from_numpy(r["zero_point"].astype(np.int16))
        tensors[f"{name}.dequant"] = torch.from_numpy(np.ascontiguousarray(r["dequant"]))
        meta.append({"name": name, "bits": bits, "symmetric": sym, "granularity": gran,
                     "group_size": g, "quant_min": r["quant_min"], "quant_max": r["quant_max"],
                     "shape": list(w.shape), "torch_ops": r["ops"]})
    # the tie cases must really exercise ties and the zero point order
    s8 = tensors["ties8_tensor.scale"].item()
    z8 = int(tensors["ties8_tensor.zero_point"].item())
    check("ties8: scale == 2^-7 and zero_point == 127", s8 == 2.0 ** -7 and z8 == 127)
    c8 = tensors["ties8_tensor.codes"].numpy().reshape(-1)[:40].astype(np.int64)
    check("ties8: codes == 127 + round_half_even(k + 0.5)",
          np.array_equal(c8, 127 + np.rint(k + 0.5).astype(np.int64)))

    # RMSE on a 576x1536 N(0,1) matrix (SmolLM2-135M's q_proj is 576x576, gate/up 1536x576).
    big = splitmix_normal(576, 1536, 2026)
    rmse = {"generator": "splitmix_normal(576, 1536, seed=2026) (this script; tests/quant_affine.rs)",
            "sum_f64": float(big.astype(np.float64).sum()),
            "first": [float(v) for v in big.reshape(-1)[:4]],
            "definition": "sqrt(mean((dequant - w)^2)) accumulated in float64", "schemes": {}}
    for label, bits, sym, gran, g in [("affine-int4", 4, False, "tensor", None),
                                      ("affine-int4-channel", 4, False, "channel", None),
                                      ("affine-int4-g64", 4, False, "group", 64),
                                      ("affine-int4-g128", 4, False, "group", 128),
                                      ("absmax-int4-g64", 4, True, "group", 64),
                                      ("affine-int8", 8, False, "tensor", None),
                                      ("absmax-int8", 8, True, "tensor", None),
                                      ("absmax-int8-channel", 8, True, "channel", None)]:
        r = torch_affine(big, bits, sym, gran, g)
        check(f"rmse {label}: consistent", r["consistent"])
        e = r["dequant"].astype(np.float64) - big.astype(np.float64)
        rmse["schemes"][label] = float(np.sqrt(np.mean(e * e)))
    print(json.dumps(rmse, indent=1))

    info = {
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "machine": platform.machine(),
        "command": "/tmp/pyref/venv/bin/python scripts/ref/make_affine_fixtures.py",
        "cases": meta, "rmse": rmse,
    }
    path = out / "affine.safetensors"
    # One metadata key: safetensors keeps metadata in a hash map, so several keys would be written
    # in a different order on every run; with one the file is byte-identical run to run.
    save_file(tensors, str(path), metadata={"fixture": json.dumps(info, sort_keys=True)})
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(meta)} cases)")
    if FAILED:
        print(f"{len(FAILED)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
