//! What LoRA costs at inference before merging: the forward time of SmolLM2-135M plain against
//! the same model with LoRA adapters on all linear layers and on q,v only, at r = 8, 16, 64, for a
//! 128-token input (prefill/training-like) and a 1-token input (decode-like, no KV cache); and
//! the time of `merge_and_unload` for the whole model at r = 16, after which the overhead is 0.
//!
//! The model is `Config::preset("smollm2-135m")` with random f32 weights (`Llama::init_random`):
//! nothing is downloaded, and the timings depend on the shapes only, not on the values (B = 0 at
//! peft's default init still runs both adapter matmuls). Also timed: `singular_values_of` on one
//! 576×1536 weight (down_proj's shape), the largest matrix a notebook would give it.
//!
//! The LoRA model runs in evaluation mode (`set_training(false)`: contiguous copies of Aᵀ, Bᵀ,
//! what inference after training or loading uses) and, as `_train_path`, without those copies
//! (how forward runs while training, minus dropout and backward).
//!
//! Because whole-model timings on a shared machine swing by ±30 % between runs, the same
//! comparison is also made per layer: the 7 linear layers of one SmolLM2 block (q, k, v, o,
//! gate, up, down) plain, with LoRA r = 16 in evaluation mode and on the training path,
//! alternating 200 (1 token) or 100 (128 tokens) times, medians of the per-round ratios (`block_*`): the cost LoRA adds where it runs.
//!
//! Also timed: PiSSA's initialisation on SmolLM2's q,v at r = 16 with `pissa_niter_4` (60
//! layers, randomized SVD) and with the exact SVD on one q_proj (576×576).
//!
//! `cargo bench --profile dev --bench lora -- [--runs R] [--block-only 1] [--clock cpu]` prints one JSON line: medians of R
//! runs after one warm-up, in ms; the plain and the LoRA model run alternately, and `overhead`
//! is the median of the per-run ratios LoRA / plain.

mod common;
use common::median;
use tunelab::peft::PeftMethod;

use std::time::Instant;

use candle_core::Var;
use candle_core::{DType, Device, Tensor};
use tunelab::model::linear::{Dense, Linear};
use tunelab::peft::{
    get_peft_model_seeded, singular_values_of, InitLoraWeights, LoraAdapter, LoraConfig, LoraLayer,
    TargetModules,
};
use tunelab::{Config, Llama};

/// Seconds on the clock `--clock` picks: `wall` (default), or `cpu`, the CPU time of all this
/// process's threads (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, Linux), which other processes
/// competing for the cores do not inflate — for a shared machine, with `RAYON_NUM_THREADS=1` so
/// that idle worker threads do not add their spinning.
fn clock() -> f64 {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if *CPU.get_or_init(|| common::arg("--clock", String::from("wall")) == "cpu") {
        #[cfg(target_os = "linux")]
        {
            #[repr(C)]
            struct Timespec {
                sec: i64,
                nsec: i64,
            }
            extern "C" {
                fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
            }
            const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
            let mut t = Timespec { sec: 0, nsec: 0 };
            // SAFETY: glibc's clock_gettime writes one timespec (two i64 on 64-bit Linux).
            if unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0 {
                return t.sec as f64 + t.nsec as f64 * 1e-9;
            }
        }
    }
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Median milliseconds of `runs` calls after one warm-up call.
fn time_ms(runs: usize, f: impl FnMut()) -> f64 {
    1e3 * common::time(runs, f)
}

/// Forward times (ms) of `plain` and `lora` on `ids`, alternating within each run so that load
/// from elsewhere on a shared machine hits both alike: (plain median, LoRA median, median of the
/// per-run ratios LoRA/plain).
fn paired_ms(plain: &Llama, lora: &Llama, ids: &Tensor, runs: usize) -> (f64, f64, f64) {
    let one = |m: &Llama| {
        let t = clock();
        m.forward(ids, None).unwrap();
        (clock() - t) * 1e3
    };
    one(plain);
    one(lora);
    let (p, l): (Vec<f64>, Vec<f64>) = (0..runs).map(|_| (one(plain), one(lora))).unzip();
    let ratios = p.iter().zip(&l).map(|(p, l)| l / p).collect();
    (median(p), median(l), median(ratios))
}

/// One SmolLM2 block's 7 linear layers: plain, and LoRA r = 16 in evaluation mode and on the
/// training path; per token count, the median time of each (µs) over `reps` alternating rounds.
fn block_linears(tokens: usize, reps: usize) -> tunelab::Result<serde_json::Value> {
    let dev = Device::Cpu;
    let shapes = [
        (576, 576),
        (192, 576),
        (192, 576),
        (576, 576),
        (1536, 576),
        (1536, 576),
        (576, 1536),
    ];
    let r = 16;
    let mut plain = Vec::new();
    let mut eval = Vec::new();
    let mut train = Vec::new();
    let mut xs = Vec::new();
    for &(out, inp) in &shapes {
        let w = Tensor::randn(0f32, 0.02, (out, inp), &dev)?;
        plain.push(Linear::new(Dense::new(w.clone(), None)?));
        for (list, training) in [(&mut eval, false), (&mut train, true)] {
            let mut l = LoraLayer::new(Linear::new(Dense::new(w.clone(), None)?));
            l.add_adapter(
                "default",
                LoraAdapter {
                    r,
                    alpha: 32.0,
                    scaling: 2.0,
                    dropout: 0.0,
                    lora_a: Var::randn(0f32, 0.02, (r, inp), &dev)?,
                    lora_b: Var::randn(0f32, 0.02, (out, r), &dev)?,
                    magnitude: None,
                },
            )?;
            l.set_training(training);
            list.push(l);
        }
        xs.push(Tensor::randn(0f32, 1.0, (1, tokens, inp), &dev)?.contiguous()?);
    }
    use tunelab::model::linear::LinearLayer;
    let mut t = [Vec::new(), Vec::new(), Vec::new()];
    for rep in 0..reps + 1 {
        for k in 0..3 {
            let which = (k + rep) % 3;
            let start = clock();
            for (j, x) in xs.iter().enumerate() {
                match which {
                    0 => plain[j].forward(x)?,
                    1 => eval[j].forward(x)?,
                    _ => train[j].forward(x)?,
                };
            }
            if rep > 0 {
                t[which].push((clock() - start) * 1e6);
            }
        }
    }
    // Ratios within each round (the three ran back to back), then their median: robust to
    // load that changes from one round to the next.
    let ratio = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
    let (oe, ot) = (ratio(&t[1], &t[0]), ratio(&t[2], &t[0]));
    let [p, e, tr] = t.map(median);
    Ok(serde_json::json!({
        "plain_us": p, "lora_eval_us": e, "lora_train_path_us": tr,
        "overhead_eval": oe, "overhead_train_path": ot,
    }))
}

fn main() -> tunelab::Result<()> {
    let runs: usize = common::arg("--runs", 5);
    let block = serde_json::json!({
        "t1": block_linears(1, 200)?,
        "t128": block_linears(128, 100)?,
    });
    if common::arg("--block-only", 0u8) == 1 {
        println!("{}", serde_json::json!({ "block_linears_r16": block }));
        return Ok(());
    }
    let dev = Device::Cpu;
    let cfg = Config::preset("smollm2-135m")?;
    // Two copies with the same weights: one stays plain, the other is wrapped and unwrapped.
    let plain = Llama::init_random(&cfg, DType::F32, &dev, 0)?;
    let mut model = Llama::init_random(&cfg, DType::F32, &dev, 0)?;
    let vocab = cfg.vocab_size as u32;
    let tokens = [128usize, 1];
    let inputs: Vec<Tensor> = tokens
        .iter()
        .map(|&t| {
            let ids: Vec<u32> = (0..t as u32).map(|i| (17 + 131 * i) % vocab).collect();
            Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)
        })
        .collect::<candle_core::Result<_>>()?;

    let mut rows = Vec::new();
    let targets = [
        ("all-linear", TargetModules::all_linear()),
        ("q,v", TargetModules::names(["q_proj", "v_proj"])),
    ];
    for (tname, target) in &targets {
        for r in [8usize, 16, 64] {
            let lcfg = LoraConfig::new(r, 2.0 * r as f64, target.clone());
            let mut peft = get_peft_model_seeded(model, &lcfg, 0)?;
            let mut row = serde_json::json!({
                "targets": tname, "r": r, "trainable": peft.trainable_parameters().trainable,
            });
            for (ids, t) in inputs.iter().zip(tokens) {
                // Without evaluation copies (a fresh get_peft_model never made any).
                let (_, l, ratio) = paired_ms(&plain, peft.base_model(), ids, runs);
                row[format!("lora_train_path_t{t}_ms")] = l.into();
                row[format!("overhead_train_path_t{t}")] = ratio.into();
                peft.eval();
                let (p, l, ratio) = paired_ms(&plain, peft.base_model(), ids, runs);
                row[format!("plain_t{t}_ms")] = p.into();
                row[format!("lora_t{t}_ms")] = l.into();
                row[format!("overhead_t{t}")] = ratio.into();
                peft.train(); // back to no copies for the next length
            }
            model = peft.unload()?;
            rows.push(row);
        }
    }

    // merge_and_unload at r = 16, all-linear: a fresh wrap per run (not timed).
    let lcfg = LoraConfig::new(16, 32.0, TargetModules::all_linear());
    let mut merge = Vec::new();
    for _ in 0..runs {
        let peft = get_peft_model_seeded(model, &lcfg, 0)?;
        let t = Instant::now();
        model = peft.merge_and_unload(true)?;
        merge.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let w = model
        .linear("model.layers.0.mlp.down_proj")?
        .dense_weight()?;
    let svd = time_ms(1, || {
        singular_values_of(&w).unwrap();
    });

    // PiSSA's initialisation (not repeated: it replaces the base weights).
    let mut pcfg = LoraConfig::new(16, 32.0, TargetModules::names(["q_proj", "v_proj"]));
    pcfg.init_lora_weights = InitLoraWeights::PissaNiter(4);
    let t = Instant::now();
    let peft = get_peft_model_seeded(model, &pcfg, 0)?;
    let pissa_niter4 = t.elapsed().as_secs_f64() * 1e3;
    let model = peft.unload()?;
    pcfg.init_lora_weights = InitLoraWeights::Pissa;
    pcfg.layers_to_transform = Some(vec![0]);
    pcfg.target_modules = TargetModules::names(["q_proj"]);
    let t = Instant::now();
    let peft = get_peft_model_seeded(model, &pcfg, 0)?;
    let pissa_exact = t.elapsed().as_secs_f64() * 1e3;
    drop(peft);

    println!(
        "{}",
        serde_json::json!({
            "impl": "tunelab",
            "model": "smollm2-135m preset, random f32 weights",
            "threads": candle_core::utils::get_num_threads(),
            "clock": common::arg("--clock", String::from("wall")),
            "runs": runs,
            "lora": rows,
            "merge_and_unload_r16_ms": median(merge),
            "block_linears_r16": block,
            "svd_576x1536_ms": svd,
            "pissa_niter4_qv_r16_60_layers_ms": pissa_niter4,
            "pissa_exact_one_q_proj_576x576_ms": pissa_exact,
        })
    );
    Ok(())
}
