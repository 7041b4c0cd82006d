#!/usr/bin/env python3
"""Make tunelab's quantization reference fixtures with bitsandbytes itself (CPU).

Every tensor in tests/fixtures/quant/ is produced by bitsandbytes' own CPU code
path (``bitsandbytes.functional.quantize_4bit`` / ``dequantize_4bit`` /
``quantize_blockwise`` / ``int8_vectorwise_quant`` and ``nn.Linear8bitLt``).
The script ALSO carries a small pure-numpy re-implementation of what those CPU
paths do (the ``spec_*`` functions below, written from reading bitsandbytes
0.50.2's Python sources and disassembling its ``libbitsandbytes_cpu.so``) and
asserts, bit for bit, that the spec and bitsandbytes agree on every case it
writes plus a few exhaustive tie/boundary sweeps.  If a future bitsandbytes
changes its CPU algorithm, the script fails instead of silently writing
different fixtures.

Setup (one time; CPU only)::

    python3 -m venv /tmp/pyref/venv
    /tmp/pyref/venv/bin/pip install -r scripts/ref/requirements.txt
    # (only torch, numpy, safetensors and bitsandbytes are needed here)

Run (from the repo root; ~20 s on 2 cores)::

    /tmp/pyref/venv/bin/python scripts/ref/make_quant_fixtures.py \
        [--out tests/fixtures/quant] [--no-rmse-large]

Writes, into --out (all little-endian safetensors, tensor names below):

codes.safetensors
    ``nf4_code`` F32[16], ``fp4_code`` F32[16] (both in code-INDEX order, as
    ``get_4bit_type``), ``fp4_code_native`` F32[16] (the C++ CPU table: index 8
    is -0.0 instead of +0.0), ``nf4_bounds`` / ``fp4_bounds`` F32[15] (the
    sorted midpoints used for quantization), ``fp4_sort_order`` I64[16]
    (sorted position -> code index), ``dynamic_map_signed`` F32[256]
    (``create_dynamic_map(signed=True)``, the double-quant code) and
    ``dynamic_map_lut_runs`` I32[k, 2] (the CPU kernel's 65536-entry
    nearest-code lookup table for that map in run-length form: rows
    (first grid index i, code index); the entry holds until the next row's i.
    Grid value of entry i is float32(2*i)/65535f - 1f; see README.md).

fourbit.safetensors
    One group of tensors per case ``<case>.<field>``; the case list with its
    parameters is in cases.json.  Fields:
    ``input`` (F32/BF16/F16, the original shape), ``packed`` U8[(n+1)//2, 1],
    ``absmax`` F32[blocks] (plain) or U8[blocks] (double quant),
    ``dequant`` (input dtype, input shape).  Double-quant cases add
    ``absmax_f32`` F32[blocks] (first-level absmax before double quant),
    ``offset`` F32[1], ``absmax2`` F32[ceil(blocks/256)], ``code2`` F32[256],
    ``absmax_restored`` F32[blocks] (= code2[q]*absmax2 + offset, what
    dequantize_4bit multiplies by).

dynamic8.safetensors
    Direct tests of the 8-bit blockwise quantizer used for double quant:
    ``<case>.input`` F32, ``.q`` U8, ``.absmax`` F32, ``.dequant`` F32.

rmse.safetensors
    ``nf4_bs64_64x1024.input`` F32[64,1024] =
    ``numpy.random.default_rng(20261123).standard_normal((64, 1024), dtype=numpy.float32)``,
    and its ``.packed`` / ``.absmax`` (plain NF4, blocksize 64) and
    ``.dq_qabsmax`` / ``.dq_absmax2`` / ``.dq_offset`` (same with double
    quant; the packed bytes are identical to ``.packed``).  The RMSE values are in cases.json ("rmse").

llm_int8.safetensors
    ``int8_vectorwise_quant`` cases ``<case>.input`` (F16 or F32), ``.q`` I8,
    ``.row_stats`` F32, ``.outlier_cols`` I64 (threshold>0 only), and a
    ``Linear8bitLt`` (threshold 6.0, eval mode) forward:
    ``lin8.x`` F16[4,32], ``lin8.weight`` F32[16,32], ``lin8.CB`` I8[16,32],
    ``lin8.SCB`` F32[16], ``lin8.outlier_cols`` I64, ``lin8.out`` F16[4,16].

cases.json
    versions, seeds, per-case parameters, RMSE figures (full float repr).
"""

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np

f32 = np.float32

# --------------------------------------------------------------------------
# Spec: a pure-numpy model of bitsandbytes 0.50.2's CPU code paths.
# --------------------------------------------------------------------------

# functional.get_4bit_type("nf4")  (== create_normal_map(0.9677083) nonzero values + 0)
SPEC_NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=f32)
# functional.get_4bit_type("fp4"): [0, .0625, 8, 12, 4, 6, 2, 3, -0, ...] / 12 in float32.
# NB the Python list has the *integer* -0 at index 8, so the torch table holds +0.0 there.
SPEC_FP4 = (np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3],
                     dtype=f32) / f32(12.0)).astype(f32)
# The C++ CPU dequant table (csrc fp4_lut) has -0.0f at index 8.
SPEC_FP4_NATIVE = SPEC_FP4.copy()
SPEC_FP4_NATIVE[8] = f32(-0.0)
# torch.argsort(fp4 code) on CPU (the two zeros, idx 0 and 8, keep index order)
SPEC_FP4_ORDER = np.array([11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3], dtype=np.int64)
TINY = f32(1e-38)  # absmax.clamp(min=1e-38) in float32 (a subnormal: 0x006ce3ee)


def spec_4bit_bounds(qt):
    code = SPEC_NF4 if qt == "nf4" else SPEC_FP4
    order = np.arange(16, dtype=np.int64) if qt == "nf4" else SPEC_FP4_ORDER
    s = code[order]
    return ((s[:-1] + s[1:]) / f32(2)).astype(f32), order


def spec_quantize_4bit(x, blocksize, qt):
    """backends/default/ops.py quantize_4bit (the kernel the CPU dispatches to)."""
    a = np.asarray(x, dtype=f32).reshape(-1)  # bf16/f16 inputs: exact upcast first
    n = a.size
    rem = n % blocksize
    full = n - rem
    blocks = full // blocksize
    if blocks:
        blk = a[:full].reshape(blocks, blocksize)
        absmax = np.abs(blk).max(axis=1).astype(f32)            # stored UNclamped
        recip = (f32(1.0) / np.maximum(absmax, TINY)).astype(f32)
        scaled = np.clip((blk * recip[:, None]).astype(f32), f32(-1), f32(1)).reshape(-1)
    else:
        absmax = np.zeros(0, f32)
        scaled = np.zeros(0, f32)
    if rem:
        am = f32(max(np.abs(a[full:]).max(), TINY))              # stored CLAMPED
        absmax = np.concatenate([absmax, np.array([am], f32)])
        tail = np.clip((a[full:] / am).astype(f32), f32(-1), f32(1))  # true division here
        scaled = np.concatenate([scaled, tail]).astype(f32)
    if scaled.size % 2:
        scaled = np.concatenate([scaled, np.zeros(1, f32)])   # pad value 0.0 -> its code
    bounds, order = spec_4bit_bounds(qt)
    pos = np.searchsorted(bounds, scaled, side="left")        # == torch.bucketize(right=False)
    q = order[pos].astype(np.uint8)
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8).reshape(-1, 1)
    return packed, absmax


def spec_dequantize_4bit(packed, absmax, blocksize, qt, n):
    """backends/cpu/ops.py dequantize_4bit -> csrc dequantizeBlockwise4bitCpu (scalar path)."""
    code = SPEC_NF4 if qt == "nf4" else SPEC_FP4_NATIVE
    p = np.asarray(packed, np.uint8).reshape(-1)
    q = np.empty(p.size * 2, np.uint8)
    q[0::2] = p >> 4
    q[1::2] = p & 15
    q = q[:n]
    return (code[q] * np.asarray(absmax, f32)[np.arange(n) // blocksize]).astype(f32)


def spec_dynamic_lut(code):
    """csrc build_quantize_lut: 65536-entry table, value grid -1 + 2i/65535 -> code index."""
    code = np.asarray(code, f32)
    mid = ((code[:-1] + code[1:]) * f32(0.5)).astype(f32)
    i = np.arange(65536)
    val = ((2 * i).astype(f32) / f32(65535.0) - f32(1.0)).astype(f32)
    # idx advances while mid[idx] < val  ->  number of midpoints strictly below val
    return np.minimum(np.searchsorted(mid, val, side="left"), 255).astype(np.uint8)


def lut_runs(lut):
    """Run-length form of the 65536-entry LUT: I32[k, 2] rows (first_grid_index, code_index)."""
    starts = np.concatenate([[0], np.nonzero(np.diff(lut.astype(np.int64)))[0] + 1])
    return np.stack([starts, lut[starts].astype(np.int64)], axis=1).astype(np.int32)


def lut_from_runs(runs):
    lut = np.zeros(65536, np.uint8)
    for k, (start, code) in enumerate(runs):
        end = runs[k + 1][0] if k + 1 < len(runs) else 65536
        lut[start:end] = code
    return lut


def spec_lut_index(v):
    """csrc quantize_cpu_impl: u16( trunc( fma((1+clamp(v))*0.5, 65535, 0.5) ) )."""
    v = np.clip(np.asarray(v, f32), f32(-1), f32(1))
    t = ((f32(1.0) + v) * f32(0.5)).astype(f32)
    # t*65535+0.5 is exact in float64 (t is a multiple of 2^-25), so this is one rounding
    y = (t.astype(np.float64) * 65535.0 + 0.5).astype(f32)
    return np.trunc(y).astype(np.int64) & 0xFFFF


def spec_quantize_blockwise(x, code, blocksize, lut=None):
    """backends/cpu/ops.py quantize_blockwise (float32) -> csrc quantize_cpu_impl<float>."""
    a = np.asarray(x, f32).reshape(-1)
    n = a.size
    if lut is None:
        lut = spec_dynamic_lut(code)
    nb = -(-n // blocksize)
    absmax = np.zeros(nb, f32)
    out = np.zeros(n, np.uint8)
    for b in range(nb):
        s = slice(b * blocksize, min(n, (b + 1) * blocksize))
        am = f32(max(f32(0), np.abs(a[s]).max()))
        absmax[b] = am
        if am == 0:
            out[s] = 0          # whole block -> index 0 (memset)
            continue
        inv = f32(f32(1.0) / am)
        out[s] = lut[spec_lut_index((a[s] * inv).astype(f32))]
    return out, absmax


def spec_dequantize_blockwise(q, absmax, code, blocksize):
    """csrc dequantizeBlockwise8bitCpu<float>: code[q] * absmax[i // blocksize]."""
    q = np.asarray(q, np.uint8).reshape(-1)
    return (np.asarray(code, f32)[q] * np.asarray(absmax, f32)[np.arange(q.size) // blocksize]).astype(f32)


def spec_torch_sum_f32(a, lanes=8):
    """torch's CPU float32 sum (ATen SumKernel cascade_sum, AVX2 = 8 lanes, ONE thread)."""
    a = np.asarray(a, f32).reshape(-1)
    n = a.size

    def ceil_log2(x):
        return 0 if x <= 1 else int(x - 1).bit_length()

    def multi_row_sum(rows, size):  # rows: (size, nrows, width)
        num_levels = 4
        level_power = max(4, ceil_log2(size) // num_levels)
        level_step = 1 << level_power
        level_mask = level_step - 1
        acc = np.zeros((num_levels,) + rows.shape[1:], f32)
        i = 0
        while i + level_step <= size:
            for _ in range(level_step):
                acc[0] = (acc[0] + rows[i]).astype(f32)
                i += 1
            for j in range(1, num_levels):
                acc[j] = (acc[j] + acc[j - 1]).astype(f32)
                acc[j - 1] = 0
                if (i & (level_mask << (j * level_power))) != 0:
                    break
        while i < size:
            acc[0] = (acc[0] + rows[i]).astype(f32)
            i += 1
        for j in range(1, num_levels):
            acc[0] = (acc[0] + acc[j]).astype(f32)
        return acc[0]

    def row_sum(items):  # items: (size, width); ilp_factor = 4
        size = items.shape[0]
        size_ilp = size // 4
        if size_ilp:
            ps = multi_row_sum(items[:size_ilp * 4].reshape(size_ilp, 4, -1), size_ilp).copy()
        else:
            ps = np.zeros((4, items.shape[1]), f32)
        for i in range(size_ilp * 4, size):
            ps[0] = (ps[0] + items[i]).astype(f32)
        for k in range(1, 4):
            ps[0] = (ps[0] + ps[k]).astype(f32)
        return ps[0]

    if n < lanes:                                    # scalar_inner_sum
        return f32(f32(0) + row_sum(a.reshape(n, 1))[0])
    vec_size = n // lanes                            # vectorized_inner_sum
    lanes_acc = row_sum(a[:vec_size * lanes].reshape(vec_size, lanes))
    final = f32(0)
    for k in range(vec_size * lanes, n):
        final = f32(final + a[k])
    for k in range(lanes):
        final = f32(final + lanes_acc[k])
    return f32(f32(0) + final)


def spec_torch_mean_f32(a):
    a = np.asarray(a, f32).reshape(-1)
    return f32(spec_torch_sum_f32(a) / f32(a.size))


def spec_int8_vectorwise_quant(x, threshold=0.0):
    """backends/default/ops.py int8_vectorwise_quant (CPU has no own kernel)."""
    a = np.asarray(x).astype(f32)             # f16 -> f32 is exact
    a = a.reshape(-1, a.shape[-1]).copy()
    rows = a.shape[0]
    outlier_cols = None
    if threshold > 0.0:
        outl = np.abs(a) >= f32(threshold)
        outlier_cols = np.nonzero(outl.any(axis=0))[0].astype(np.int64)
        a[outl] = 0
    row_stats = np.abs(a).max(axis=1).astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (f32(127.0) / row_stats).astype(f32)
        q = np.rint((a * scale[:, None]).astype(f32))      # rint = round half to even
    q = np.nan_to_num(q, nan=0.0).astype(np.int8)
    if rows > 1 and outlier_cols is not None:
        q[:, outlier_cols] = 0
    return q, row_stats, outlier_cols


# --------------------------------------------------------------------------
# bitsandbytes side
# --------------------------------------------------------------------------

def bits_equal(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return np.array_equal(a.view(np.dtype(f"u{a.itemsize}")), b.view(np.dtype(f"u{b.itemsize}")))
    return np.array_equal(a, b)


def num_equal(a, b):
    """Value equality (+0.0 == -0.0), shapes must match."""
    a = np.asarray(a)
    b = np.asarray(b)
    return a.shape == b.shape and np.array_equal(a, b)


def t2np(t):
    import torch
    if t.dtype in (torch.bfloat16,):
        return t.float().numpy()
    return t.detach().cpu().numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/quant")
    ap.add_argument("--no-rmse-large", action="store_true",
                    help="skip the informational 4096x1024 RMSE figure")
    args = ap.parse_args()

    import torch
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from bitsandbytes.backends.default.ops import _get_4bit_quantize_bounds
    from safetensors.torch import save_file, load_file

    torch.set_num_threads(1)  # torch.mean's summation order depends on the thread count
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    T = torch.from_numpy
    meta = {
        "bitsandbytes": bnb.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "command": "/tmp/pyref/venv/bin/python scripts/ref/make_quant_fixtures.py",
    }
    print(json.dumps(meta))
    checks = []

    def check(name, ok):
        checks.append((name, bool(ok)))
        if not ok:
            print("SPEC MISMATCH:", name)

    # ---------------------------------------------------------------- codes
    nf4 = F.get_4bit_type("nf4", device="cpu")
    fp4 = F.get_4bit_type("fp4", device="cpu")
    dyn = F.create_dynamic_map(signed=True)
    check("nf4 code table", bits_equal(t2np(nf4), SPEC_NF4))
    check("fp4 code table", bits_equal(t2np(fp4), SPEC_FP4))
    for qt in ("nf4", "fp4"):
        b, o = _get_4bit_quantize_bounds(qt, torch.device("cpu"))
        sb, so = spec_4bit_bounds(qt)
        check(f"{qt} bounds", bits_equal(t2np(b), sb) and np.array_equal(t2np(o), so))
    lut = spec_dynamic_lut(t2np(dyn))
    check("lut run-length round trip", np.array_equal(lut_from_runs(lut_runs(lut)), lut))
    codes = {
        "nf4_code": nf4.clone(),
        "fp4_code": fp4.clone(),
        "fp4_code_native": T(SPEC_FP4_NATIVE.copy()),
        "nf4_bounds": T(spec_4bit_bounds("nf4")[0].copy()),
        "fp4_bounds": T(spec_4bit_bounds("fp4")[0].copy()),
        "fp4_sort_order": T(SPEC_FP4_ORDER.copy()),
        "dynamic_map_signed": dyn.clone(),
        "dynamic_map_lut_runs": T(lut_runs(lut)),
    }
    save_file(codes, str(out / "codes.safetensors"), metadata={"bitsandbytes": bnb.__version__})

    # ---------------------------------------------------------------- 4-bit cases
    cases_meta = []
    fourbit = {}

    def make_input(kind, shape, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(shape, dtype=np.float32)
        flat = x.reshape(-1)
        if kind == "outliers":
            idx = rng.choice(flat.size, size=max(1, flat.size // 50), replace=False)
            flat[idx] *= f32(25.0)
        elif kind == "zero_blocks":
            # first block all zero (absmax 0) and an all-zero ragged tail (absmax 1e-38)
            flat[:64] = 0.0
            rem = flat.size % 64
            if rem:
                flat[-rem:] = 0.0
        elif kind == "ties":
            # every block starts with 1.0 so absmax == 1 and x*(1/absmax) == x exactly;
            # the rest are the quantization midpoints and their float32 neighbours.
            bnds = np.concatenate([spec_4bit_bounds("nf4")[0], spec_4bit_bounds("fp4")[0]])
            vals = np.concatenate([bnds, np.nextafter(bnds, f32(2)), np.nextafter(bnds, f32(-2)),
                                   np.array([0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0], f32)]).astype(f32)
            flat[:] = np.resize(vals, flat.size)
            flat[::64] = 1.0
        return x

    def add_4bit_case(qt, bs, shape, kind, dtype, dq, seed):
        import torch
        name = f"{qt}_bs{bs}_{'x'.join(map(str, shape))}_{kind}_{dtype}" + ("_dq" if dq else "")
        x = make_input(kind, shape, seed)
        tdt = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
        t = T(x).to(tdt)
        packed, st = F.quantize_4bit(t, blocksize=bs, quant_type=qt, compress_statistics=dq)
        deq = F.dequantize_4bit(packed, st)
        quirk = None
        if deq.shape != t.shape:
            # bnb 0.50.2 CPU quirk: the native kernel views a 1-D shape (n,) as (1, n) and
            # returns that 2-D tensor (the Python path for odd n keeps (n,)).
            assert len(shape) == 1 and tuple(deq.shape) == (1, shape[0]), deq.shape
            quirk = f"dequantize_4bit returned shape {list(deq.shape)}; stored reshaped to {list(shape)}"
            deq = deq.reshape(t.shape)
        assert deq.dtype == tdt and deq.shape == t.shape
        # spec
        sp, sa = spec_quantize_4bit(t.float().numpy(), bs, qt)
        ok = bits_equal(t2np(packed), sp)
        rec = {"input": t.clone(), "packed": packed.clone(), "dequant": deq.clone()}
        if dq:
            off = st.offset
            assert off.dtype == torch.float32 and off.dim() == 0
            s_off = spec_torch_mean_f32(sa)
            ok &= bits_equal(np.array([off.item()], f32), np.array([s_off], f32))
            sq, sa2 = spec_quantize_blockwise((sa - s_off).astype(f32), t2np(dyn), 256, lut)
            ok &= bits_equal(t2np(st.absmax), sq) and bits_equal(t2np(st.state2.absmax), sa2)
            ok &= st.state2.blocksize == 256 and bits_equal(t2np(st.state2.code), t2np(dyn))
            restored = (spec_dequantize_blockwise(sq, sa2, t2np(dyn), 256) + s_off).astype(f32)
            rec.update({"absmax": st.absmax.clone(), "absmax_f32": T(sa.copy()),
                        "offset": off.reshape(1).clone(), "absmax2": st.state2.absmax.clone(),
                        "code2": st.state2.code.clone(), "absmax_restored": T(restored.copy())})
            used_absmax = restored
        else:
            ok &= bits_equal(t2np(st.absmax), sa)
            rec["absmax"] = st.absmax.clone()
            used_absmax = sa
        sd = spec_dequantize_4bit(sp, used_absmax, bs, qt, x.size).reshape(shape)
        sd_t = T(sd).to(tdt)   # float32 product, then round-to-nearest-even to bf16/f16
        # +0/-0 may differ for fp4 code 8 (see notes); compare by value, then bits if f32-native
        ok &= num_equal(t2np(deq), t2np(sd_t))
        check(f"4bit {name}", ok)
        for k, v in rec.items():
            fourbit[f"{name}.{k}"] = v.contiguous()
        n = int(np.prod(shape))
        cases_meta.append({
            "name": name, "quant_type": qt, "blocksize": bs, "shape": list(shape),
            "numel": n, "input": kind, "dtype": dtype, "double_quant": dq, "seed": seed,
            "blocks": -(-n // bs), "ragged_last_block": n % bs != 0, "odd_numel": n % 2 == 1,
            "dequant_shape_quirk": quirk,
            "dequant_path": ("default (python, torch.compile)" if shape[-1] % 2 else
                             "cpu native dequantizeBlockwise4bitCpu"),
        })

    seed = 1000
    specs = []
    for qt in ("nf4", "fp4"):
        specs += [
            (qt, 64, (16, 64), "normal", "f32", False),
            (qt, 64, (8, 100), "normal", "f32", False),     # ragged last block (800 % 64 = 32)
            (qt, 64, (3, 7), "normal", "f32", False),       # 21 elements: odd + single ragged block
            (qt, 64, (130,), "normal", "f32", False),       # 1-D, 2 full blocks + 2
            (qt, 32, (8, 100), "normal", "f32", False),
            (qt, 128, (16, 64), "normal", "f32", False),
            (qt, 128, (8, 100), "normal", "f32", False),
            (qt, 4096, (40, 103), "normal", "f32", False),  # 4120 = 4096 + ragged 24
            (qt, 64, (16, 64), "outliers", "f32", False),
            (qt, 64, (3, 67), "zero_blocks", "f32", False),  # absmax 0 block + all-zero tail
            (qt, 64, (4, 64), "ties", "f32", False),
            (qt, 64, (16, 64), "normal", "bf16", False),
            (qt, 64, (3, 7), "normal", "bf16", False),
            (qt, 64, (8, 100), "normal", "f16", False),
            (qt, 64, (8, 100), "normal", "f32", True),      # 13 absmax -> 1 nested block
        ]
    specs += [("nf4", 32, (8, 1040), "normal", "f32", True),   # 260 absmax -> nested 256 + 4
              ("nf4", 128, (16, 64), "outliers", "f32", True),
              ("nf4", 64, (16, 64), "normal", "bf16", True)]
    for s in specs:
        seed += 1
        add_4bit_case(*s, seed=seed)
    save_file(fourbit, str(out / "fourbit.safetensors"), metadata={"bitsandbytes": bnb.__version__})

    # ---------------------------------------------------------------- 8-bit dynamic (double-quant quantizer)
    dyn8 = {}
    dyn_np = t2np(dyn)
    mids = ((dyn_np[:-1] + dyn_np[1:]) * f32(0.5)).astype(f32)
    tie_vals = np.concatenate([mids, np.nextafter(mids, f32(2)), np.nextafter(mids, f32(-2)),
                               np.array([0.0, -0.0, 1e-7, -1e-7, 1.5e-5, -1.5e-5, 1.6e-5, -1.6e-5,
                                         3e-5, -3e-5, 1.0, -1.0], f32)]).astype(f32)
    d8_inputs = {
        "ties_bs256": (np.resize(tie_vals, 1024).astype(f32), 256),
        "normal_bs256_n700": (np.random.default_rng(77).standard_normal(700, dtype=np.float32), 256),
        "absmax_like_bs256_n300": ((np.abs(np.random.default_rng(78).standard_normal(300, dtype=np.float32))
                                    - f32(0.8)).astype(f32), 256),
        "zeros_then_data_bs64_n130": (np.concatenate([np.zeros(64, f32),
                                      np.random.default_rng(79).standard_normal(66, dtype=np.float32)]), 64),
    }
    for name, (x, bs) in d8_inputs.items():
        x = x.copy()
        if name.startswith("ties"):
            x[::bs] = 1.0
        q, st = F.quantize_blockwise(T(x.copy()), code=dyn, blocksize=bs)
        deq = F.dequantize_blockwise(q, st)
        sq, sa = spec_quantize_blockwise(x, dyn_np, bs, lut)
        ok = bits_equal(t2np(q), sq) and bits_equal(t2np(st.absmax), sa)
        ok &= bits_equal(t2np(deq), spec_dequantize_blockwise(sq, sa, dyn_np, bs))
        check(f"dyn8 {name}", ok)
        dyn8.update({f"{name}.input": T(x), f"{name}.q": q.clone(), f"{name}.absmax": st.absmax.clone(),
                     f"{name}.dequant": deq.clone()})
        cases_meta.append({"name": name, "kind": "quantize_blockwise", "code": "dynamic_map_signed",
                           "blocksize": bs, "numel": int(x.size)})
    # exhaustive LUT sweep (not stored): every LUT grid value and every map midpoint +-1ulp
    grid = ((2 * np.arange(65536)).astype(f32) / f32(65535.0) - f32(1.0)).astype(f32)
    sweep = np.concatenate([grid, np.nextafter(grid, f32(2)), np.nextafter(grid, f32(-2)), tie_vals])
    sweep = np.clip(sweep, -1, 1).astype(f32)
    pad = (-sweep.size) % 4095
    sweep = np.concatenate([sweep, np.zeros(pad, f32)]).reshape(-1, 4095)
    sweep = np.concatenate([np.ones((sweep.shape[0], 1), f32), sweep], axis=1).reshape(-1)
    q, st = F.quantize_blockwise(T(sweep.copy()), code=dyn, blocksize=4096)
    check("dyn8 exhaustive LUT sweep", bits_equal(t2np(q), spec_quantize_blockwise(sweep, dyn_np, 4096, lut)[0]))
    save_file(dyn8, str(out / "dynamic8.safetensors"), metadata={"bitsandbytes": bnb.__version__})

    # ---------------------------------------------------------------- torch.mean model check
    rng = np.random.default_rng(5)
    mean_ok = True
    for _ in range(60):
        a = (np.abs(rng.standard_normal(int(rng.integers(1, 20000)))) * f32(rng.choice([1, 3.7, 0.01]))).astype(f32)
        mean_ok &= bits_equal(np.array([torch.from_numpy(a).mean().item()], f32),
                              np.array([spec_torch_mean_f32(a)], f32))
    check("torch.mean float32 model (1 thread)", mean_ok)

    # ---------------------------------------------------------------- RMSE
    rmse = {}
    RMSE_SEED = 20261123
    w = np.random.default_rng(RMSE_SEED).standard_normal((64, 1024), dtype=np.float32)
    tw = T(w.copy())
    pk, st = F.quantize_4bit(tw, blocksize=64, quant_type="nf4")
    deq = F.dequantize_4bit(pk, st).numpy()
    r = math.sqrt(float(np.mean((deq.astype(np.float64) - w.astype(np.float64)) ** 2)))
    pk2, st2 = F.quantize_4bit(tw, blocksize=64, quant_type="nf4", compress_statistics=True)
    deq2 = F.dequantize_4bit(pk2, st2).numpy()
    r2 = math.sqrt(float(np.mean((deq2.astype(np.float64) - w.astype(np.float64)) ** 2)))
    sp, sa = spec_quantize_4bit(w, 64, "nf4")
    check("rmse input spec", bits_equal(t2np(pk), sp) and bits_equal(t2np(st.absmax), sa)
          and bits_equal(t2np(pk2), sp))
    rmse["nf4_bs64_64x1024"] = {
        "generator": f"numpy.random.default_rng({RMSE_SEED}).standard_normal((64, 1024), dtype=numpy.float32)",
        "stored_in": "rmse.safetensors nf4_bs64_64x1024.input",
        "rmse": r, "rmse_repr": repr(r),
        "rmse_double_quant": r2, "rmse_double_quant_repr": repr(r2),
        "definition": "sqrt(mean((dequantize_4bit(quantize_4bit(w)) - w)^2)) accumulated in float64",
    }
    save_file({
        "nf4_bs64_64x1024.input": tw,
        "nf4_bs64_64x1024.packed": pk.clone(),
        "nf4_bs64_64x1024.absmax": st.absmax.clone(),
        "nf4_bs64_64x1024.dq_qabsmax": st2.absmax.clone(),
        "nf4_bs64_64x1024.dq_absmax2": st2.state2.absmax.clone(),
        "nf4_bs64_64x1024.dq_offset": st2.offset.reshape(1).clone(),
    }, str(out / "rmse.safetensors"), metadata={"bitsandbytes": bnb.__version__})
    if not args.no_rmse_large:
        wl = np.random.default_rng(RMSE_SEED).standard_normal((4096, 1024), dtype=np.float32)
        pkl, stl = F.quantize_4bit(T(wl), blocksize=64, quant_type="nf4")
        dl = F.dequantize_4bit(pkl, stl).numpy()
        rl = math.sqrt(float(np.mean((dl.astype(np.float64) - wl.astype(np.float64)) ** 2)))
        rmse["nf4_bs64_4096x1024_not_stored"] = {
            "generator": f"numpy.random.default_rng({RMSE_SEED}).standard_normal((4096, 1024), dtype=numpy.float32)",
            "note": "informational only (input not stored; the first 64 rows equal the stored 64x1024 input)",
            "rmse": rl, "rmse_repr": repr(rl),
        }
        check("4096x1024 prefix == 64x1024", np.array_equal(wl[:64], w))
    print("RMSE:", json.dumps(rmse, indent=1))

    # ---------------------------------------------------------------- LLM.int8
    i8 = {}

    def add_i8(name, x, threshold):
        xt = T(x) if isinstance(x, np.ndarray) else x
        xin = xt.clone()
        q, rs, oc = F.int8_vectorwise_quant(xin, threshold=threshold)
        check(f"int8 {name} input restored", torch.equal(xin, xt))
        sq, srs, soc = spec_int8_vectorwise_quant(t2np(xt), threshold)
        ok = np.array_equal(t2np(q), sq) and bits_equal(t2np(rs), srs)
        ok &= (oc is None and soc is None) or np.array_equal(t2np(oc), soc)
        check(f"int8 {name}", ok)
        i8[f"{name}.input"] = xt.clone()
        i8[f"{name}.q"] = q.clone()
        i8[f"{name}.row_stats"] = rs.clone()
        if oc is not None:
            i8[f"{name}.outlier_cols"] = oc.clone()
        cases_meta.append({"name": name, "kind": "int8_vectorwise_quant", "threshold": threshold,
                           "dtype": str(xt.dtype).replace("torch.", ""), "shape": list(xt.shape)})

    rng = np.random.default_rng(88)
    add_i8("vq_f16_8x32", T(rng.standard_normal((8, 32), dtype=np.float32)).half(), 0.0)
    ties = np.array([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5, -126.5, 0.0, -0.0],
                     [254.0, 1.0, 3.0, 5.0, -1.0, -3.0, -5.0, 7.0, 0.25, 2.0, 4.0, 6.0]], np.float32)
    add_i8("vq_f32_ties_2x12", ties, 0.0)
    x6 = rng.standard_normal((8, 32), dtype=np.float32)
    x6[1, 3] = 9.5
    x6[5, 3] = -7.0
    x6[2, 17] = 6.0          # exactly the threshold: counts as an outlier (>=)
    x6[6, 30] = -6.25
    x6[4, 9] = 5.99
    add_i8("vq_f16_8x32_thr6", T(x6).half(), 6.0)
    add_i8("vq_f16_1x32_thr6", T(x6[1:2].copy()).half(), 6.0)   # rows == 1: columns not zeroed
    add_i8("vq_f32_4x16_thr6_none", T(rng.standard_normal((4, 16), dtype=np.float32)), 6.0)

    # Linear8bitLt with threshold 6.0 in eval mode (the int8 + fp16-outlier path)
    W = rng.standard_normal((16, 32), dtype=np.float32) * f32(0.2)
    X = rng.standard_normal((4, 32), dtype=np.float32)
    X[1, 5] = 8.0
    X[3, 20] = -6.5
    lin = bnb.nn.Linear8bitLt(32, 16, bias=False, has_fp16_weights=False, threshold=6.0)
    lin.weight = bnb.nn.Int8Params(T(W.copy()), requires_grad=False, has_fp16_weights=False)
    lin = lin.to("cpu")   # quantizes the weight (int8_vectorwise_quant of W.half())
    lin.eval()
    with torch.no_grad():
        y = lin(T(X).half())
    CB, SCB, idx = lin.state.CB, lin.state.SCB, lin.state.idx
    sq, srs, _ = spec_int8_vectorwise_quant(W.astype(np.float16), 0.0)
    check("lin8 weight", np.array_equal(t2np(CB), sq) and bits_equal(t2np(SCB), srs))
    i8.update({"lin8.x": T(X).half(), "lin8.weight": T(W), "lin8.CB": CB.clone(), "lin8.SCB": SCB.clone(),
               "lin8.outlier_cols": idx.clone(), "lin8.out": y.clone()})
    save_file(i8, str(out / "llm_int8.safetensors"), metadata={"bitsandbytes": bnb.__version__})

    # ---------------------------------------------------------------- reload + re-dequantize with bnb
    from bitsandbytes.functional import QuantState
    fb = load_file(str(out / "fourbit.safetensors"))
    reload_ok = True
    for c in cases_meta:
        if "quant_type" not in c:
            continue
        nm = c["name"]
        inp = fb[f"{nm}.input"]
        code = F.get_4bit_type(c["quant_type"], device="cpu")
        if c["double_quant"]:
            st2 = QuantState(absmax=fb[f"{nm}.absmax2"], code=fb[f"{nm}.code2"], blocksize=256,
                             dtype=torch.float32)
            qs = QuantState(absmax=fb[f"{nm}.absmax"], shape=inp.shape, code=code, blocksize=c["blocksize"],
                            quant_type=c["quant_type"], dtype=inp.dtype,
                            offset=fb[f"{nm}.offset"].reshape(()), state2=st2)
        else:
            qs = QuantState(absmax=fb[f"{nm}.absmax"], shape=inp.shape, code=code, blocksize=c["blocksize"],
                            quant_type=c["quant_type"], dtype=inp.dtype)
        d = F.dequantize_4bit(fb[f"{nm}.packed"], qs).reshape(inp.shape)
        reload_ok &= bool(torch.equal(d, fb[f"{nm}.dequant"]))
        p2, s2 = F.quantize_4bit(inp, blocksize=c["blocksize"], quant_type=c["quant_type"],
                                 compress_statistics=c["double_quant"])
        reload_ok &= bool(torch.equal(p2, fb[f"{nm}.packed"])) and bool(torch.equal(s2.absmax, fb[f"{nm}.absmax"]))
    check("reload fourbit.safetensors and re-run bnb", reload_ok)
    rm = load_file(str(out / "rmse.safetensors"))
    qs = QuantState(absmax=rm["nf4_bs64_64x1024.absmax"], shape=(64, 1024), code=nf4, blocksize=64,
                    quant_type="nf4", dtype=torch.float32)
    d = F.dequantize_4bit(rm["nf4_bs64_64x1024.packed"], qs).double()
    r_again = math.sqrt(float(((d - rm["nf4_bs64_64x1024.input"].double()) ** 2).mean()))
    check("reload rmse", r_again == rmse["nf4_bs64_64x1024"]["rmse"])

    meta["rmse"] = rmse
    meta["cases"] = cases_meta
    meta["spec_checks"] = {k: v for k, v in checks}
    with open(out / "cases.json", "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
    for p in out.iterdir():
        os.chmod(p, 0o644)   # safetensors creates files 0600
    total = sum(os.path.getsize(p) for p in out.iterdir())
    print(f"wrote {len(list(out.iterdir()))} files, {total} bytes total")
    bad = [k for k, v in checks if not v]
    print(f"spec checks: {len(checks) - len(bad)}/{len(checks)} passed")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
