//! NF4 quantize / dequantize throughput on CPU beside a plain memory copy of the same bytes, and
//! the forward time of a 4-bit linear layer against a dense f32 one at SmolLM2's shapes. The
//! peer, bitsandbytes on CPU, runs in the same session through benches/run_quant.sh.
//!
//! `cargo bench --bench quant -- [--runs R]` prints one JSON line.
//! GB/s = bytes of the f32 weight / seconds (the dequantized output has that size; the packed
//! input is 1/8 of it), as benches/peer_bnb_quant.py defines it.

mod common;
use common::time;

use candle_core::{DType, Device, Tensor};
use tunelab::quant::nf4::{dequantize_4bit, dequantize_4bit_into, quantize_4bit};
use tunelab::quant::{quantize_4bit_weight, FourBitConfig, QLinear};
use tunelab::{Dense, LinearLayer};

fn main() -> tunelab::Result<()> {
    let runs: usize = common::arg("--runs", 7);
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    for (out, inp) in [(576usize, 1536usize), (1536, 576), (4096, 4096)] {
        let w = Tensor::randn(0f32, 1.0, (out, inp), &dev)?;
        let values: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let bytes = (4 * out * inp) as f64;
        for dq in [false, true] {
            let cfg = FourBitConfig::nf4(dq);
            let shape = [out, inp];
            let quant = time(runs, || {
                quantize_4bit(&values, &shape, &cfg).unwrap();
            });
            let (packed, state) = quantize_4bit(&values, &shape, &cfg)?;
            let dequant = time(runs, || {
                dequantize_4bit(&packed, &state).unwrap();
            });
            let mut buf = vec![0f32; 2 * packed.len()];
            let dequant_into = time(runs, || {
                dequantize_4bit_into(&packed, &state, &mut buf).unwrap();
            });
            let mut dst = vec![0f32; values.len()];
            let copy = time(runs, || dst.copy_from_slice(std::hint::black_box(&values)));
            let clone = time(runs, || {
                std::hint::black_box(values.clone());
            });
            rows.push(serde_json::json!({
                "shape": format!("{out}x{inp}"), "double_quant": dq,
                "quantize_gbps": bytes / quant / 1e9, "dequantize_gbps": bytes / dequant / 1e9,
                "dequantize_into_gbps": bytes / dequant_into / 1e9,
                "copy_gbps": bytes / copy / 1e9, "clone_gbps": bytes / clone / 1e9,
            }));
        }
    }
    // Forward: x [1, T, in] through dense f32 and through NF4+DQ (dequantize + matmul).
    let mut fwd = Vec::new();
    for (out, inp) in [(576usize, 576usize), (1536, 576), (576, 1536)] {
        for t in [1usize, 128] {
            let w = Tensor::randn(0f32, 0.05, (out, inp), &dev)?;
            let x = Tensor::randn(0f32, 1.0, (1, t, inp), &dev)?;
            let dense = Dense::new(w.clone(), None)?;
            let q = QLinear::new(
                quantize_4bit_weight(&w, "w", &FourBitConfig::nf4(true))?,
                None,
                DType::F32,
            )?;
            let td = time(runs, || {
                dense.forward(&x).unwrap();
            });
            let tq = time(runs, || {
                q.forward(&x).unwrap();
            });
            fwd.push(serde_json::json!({
                "shape": format!("{out}x{inp}"), "tokens": t,
                "dense_ms": td * 1e3, "nf4_ms": tq * 1e3, "ratio": tq / td,
            }));
        }
    }
    println!(
        "{}",
        serde_json::json!({"tunelab": rows, "forward": fwd, "runs": runs, "threads": std::thread::available_parallelism().map_or(1, |t| t.get())})
    );
    Ok(())
}
