//! The code tables of 4-bit and 8-bit blockwise quantization, as bitsandbytes defines them.
//!
//! - NF4 (NormalFloat, QLoRA — Dettmers et al. 2023, §3): 16 levels at quantiles of N(0, 1),
//!   normalised to [−1, 1], with an exact 0. [`create_normal_map`] derives them; [`NF4_CODE`]
//!   is bitsandbytes' table (`functional.get_4bit_type("nf4")`), and a test checks the two agree
//!   bit for bit.
//! - FP4 (E2M1 without infinities): bitsandbytes' `[0, 0.0625, 8, 12, 4, 6, 2, 3, −0, …] / 12`,
//!   indexed by the bit pattern sign|e1 e0|m.
//! - The signed 8-bit dynamic map ([`create_dynamic_map`], Dettmers 2016, *8-Bit Approximations
//!   for Parallelism in Deep Learning*): a sign, a run of zero bits giving a decimal exponent
//!   10^(−6..0), and a linear fraction; used for double quantization of the absmax constants.
//!
//! Quantizing to a table means picking the nearest level. bitsandbytes does that with the
//! float32 midpoints of the sorted table ([`midpoints`]): `q = #{k : mid[k] < x}` (torch's
//! `bucketize`), so an exact tie goes to the lower level.

/// bitsandbytes' NF4 table (`get_4bit_type("nf4")`), code index order (= sorted).
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bitsandbytes' FP4 table (`get_4bit_type("fp4")`), indexed by the bit pattern
/// sign|e1 e0|m: `[0, 0.0625, 8, 12, 4, 6, 2, 3, −0, −0.0625, −8, −12, −4, −6, −2, −3] / 12`.
/// Index 8 is +0.0 as in torch's table (the native CPU table has −0.0; equal as numbers).
pub fn fp4_code() -> [f32; 16] {
    let raw: [f32; 16] = [
        0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0,
        -3.0,
    ];
    raw.map(|v| v / 12.0)
}

/// `torch.linspace(start, end, steps)` in float32, as ATen computes it: the first half counts
/// up from `start`, the second half down from `end`, with `step = (end − start)/(steps − 1)`.
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// The inverse CDF of the standard normal distribution, Φ⁻¹(p), by Wichura's algorithm AS 241
/// (PPND16, *Applied Statistics* 37, 1988), accurate to about 1e−16: what `scipy.stats.norm.ppf`
/// computes for bitsandbytes.
// The coefficients are AS 241's published ones, digit for digit.
#[allow(clippy::inconsistent_digit_grouping, clippy::excessive_precision)]
pub fn normal_ppf(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        let num = ((((((2509.080_928_730_122_7 * r + 33430.575_583_588_128) * r
            + 67265.770_927_008_7)
            * r
            + 45921.953_931_549_87)
            * r
            + 13731.693_765_509_461)
            * r
            + 1971.590_950_306_551_3)
            * r
            + 133.141_667_891_784_38)
            * r
            + 3.387_132_872_796_366_5;
        let den = ((((((5226.495_278_852_545 * r + 28729.085_735_721_943) * r
            + 39307.895_800_092_71)
            * r
            + 21213.794_301_586_597)
            * r
            + 5394.196_021_424_751)
            * r
            + 687.187_007_492_057_9)
            * r
            + 42.313_330_701_600_91)
            * r
            + 1.0;
        return q * num / den;
    }
    let mut r = if q < 0.0 { p } else { 1.0 - p };
    r = (-r.ln()).sqrt();
    let x = if r <= 5.0 {
        let r = r - 1.6;
        let num = ((((((7.745_450_142_783_414e-4 * r + 0.022_723_844_989_269_184) * r
            + 0.241_780_725_177_450_6)
            * r
            + 1.270_458_252_452_368_4)
            * r
            + 3.647_848_324_763_204_5)
            * r
            + 5.769_497_221_460_691)
            * r
            + 4.630_337_846_156_546)
            * r
            + 1.423_437_110_749_683_5;
        let den = ((((((1.050_750_071_644_416_9e-9 * r + 5.475_938_084_995_345e-4) * r
            + 0.015_198_666_563_616_457)
            * r
            + 0.148_103_976_427_480_08)
            * r
            + 0.689_767_334_985_1)
            * r
            + 1.676_384_830_183_803_8)
            * r
            + 2.053_191_626_637_759)
            * r
            + 1.0;
        num / den
    } else {
        let r = r - 5.0;
        let num = ((((((2.010_334_399_292_288_1e-7 * r + 2.711_555_568_743_487_6e-5) * r
            + 0.001_242_660_947_388_078_4)
            * r
            + 0.026_532_189_526_576_124)
            * r
            + 0.296_560_571_828_504_9)
            * r
            + 1.784_826_539_917_291_3)
            * r
            + 5.463_784_911_164_114)
            * r
            + 6.657_904_643_501_103;
        let den = ((((((2.044_263_103_389_939_7e-15 * r + 1.421_511_758_316_446e-7) * r
            + 1.846_318_317_510_054_8e-5)
            * r
            + 7.868_691_311_456_133e-4)
            * r
            + 0.014_875_361_290_850_615)
            * r
            + 0.136_929_880_922_735_8)
            * r
            + 0.599_832_206_555_888)
            * r
            + 1.0;
        num / den
    };
    if q < 0.0 {
        -x
    } else {
        x
    }
}

/// NF4 as `functional.create_normal_map(offset, use_extra_value)` builds it, the 16 levels in
/// sorted order: Φ⁻¹ at `linspace(offset, 0.5, 9)[:-1]` (8 positive quantiles; 7 with
/// `use_extra_value = false`) and the negatives of Φ⁻¹ at `linspace(offset, 0.5, 8)[:-1]`
/// (7 negative), plus 0, each rounded to float32 and divided (in float32) by the largest.
/// bitsandbytes' default offset is 0.9677083 (Φ⁻¹ = 1.8481308); dividing by the largest value
/// puts the outermost levels at exactly ±1.
pub fn create_normal_map(offset: f32, use_extra_value: bool) -> Vec<f32> {
    let pos_steps = if use_extra_value { 9 } else { 8 };
    let ppf = |p: &f32| normal_ppf(*p as f64) as f32;
    let pos = linspace_f32(offset, 0.5, pos_steps);
    let neg = linspace_f32(offset, 0.5, 8);
    let mut v: Vec<f32> = pos[..pos.len() - 1].iter().map(ppf).collect();
    v.push(0.0);
    v.extend(neg[..neg.len() - 1].iter().map(|p| -ppf(p)));
    v.sort_by(|a, b| a.total_cmp(b));
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    v.iter().map(|x| x / max).collect()
}

/// bitsandbytes' signed 8-bit dynamic map as float32 bit patterns, sorted (index 127 is 0,
/// 255 is 1.0, 0 is −0.99296875): the output of `functional.create_dynamic_map(signed=True)`
/// in bitsandbytes 0.50.2 with torch 2.15 (tests/fixtures/quant/codes.safetensors).
const DYNAMIC_MAP_SIGNED_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// The signed 8-bit dynamic map that double quantization uses, exactly as bitsandbytes has it.
/// [`create_dynamic_map`] derives the same 256 values from the formula, but torch's float32
/// `linspace` rounds some of its points differently from a plain `start + i·step` (its
/// vectorised kernel), which moves 64 of the 256 values by one or two ulps; quantization must use
/// bitsandbytes' exact values, so they are tabulated here.
pub fn dynamic_map_signed() -> Vec<f32> {
    DYNAMIC_MAP_SIGNED_BITS
        .iter()
        .map(|&b| f32::from_bits(b))
        .collect()
}

/// The signed dynamic map from its definition, `create_dynamic_map(signed=True,
/// max_exponent_bits=7, total_bits=8)` (Dettmers 2016): for i = 0..6, the midpoints of
/// `linspace(0.1, 1, 2^i + 1)` scaled by ±10^(i−6), then 0 and 1; 256 values, sorted. Agrees
/// with [`dynamic_map_signed`] to two float32 ulps (see there).
pub fn create_dynamic_map() -> Vec<f32> {
    let mut data = Vec::with_capacity(256);
    for i in 0..7 {
        let b = linspace_f32(0.1, 1.0, (1 << i) + 1);
        // torch multiplies the float32 tensor by the Python float 10^(i−6) in double precision
        // and rounds the product to float32.
        let scale = 10f64.powi(i - 6);
        for w in b.windows(2) {
            let mean = ((w[0] + w[1]) / 2.0) as f64;
            data.push((scale * mean) as f32);
            data.push((-scale * mean) as f32);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(|a, b| a.total_cmp(b));
    data
}

/// The float32 midpoints `(s[k] + s[k+1]) / 2` of the sorted table `s`, which bitsandbytes
/// quantizes against, and the permutation from sorted position to code index (identity for NF4
/// and the dynamic map; for FP4 `[11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]`).
pub fn midpoints(code: &[f32]) -> (Vec<f32>, Vec<u8>) {
    let mut order: Vec<u8> = (0..code.len() as u8).collect();
    // A stable sort by value keeps the two FP4 zeros in index order (0, then 8).
    order.sort_by(|&a, &b| {
        code[a as usize]
            .total_cmp(&code[b as usize])
            .then(a.cmp(&b))
    });
    let sorted: Vec<f32> = order.iter().map(|&i| code[i as usize]).collect();
    let mids = sorted.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    (mids, order)
}

/// Sorted position of `x` among the midpoints: the number of midpoints strictly below `x`
/// (`torch.bucketize(x, mids, right=False)`), so a tie goes to the lower level.
pub fn bucketize(x: f32, mids: &[f32]) -> usize {
    mids.partition_point(|&m| m < x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_map_is_bitsandbytes_nf4() {
        let derived = create_normal_map(0.967_708_3, true);
        assert_eq!(derived.len(), 16);
        for (i, (a, b)) in derived.iter().zip(NF4_CODE).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "level {i}: derived {a} vs table {b}"
            );
        }
    }

    #[test]
    fn ppf_known_values() {
        assert_eq!(normal_ppf(0.5), 0.0);
        assert!((normal_ppf(0.975) - 1.959_963_984_540_054).abs() < 1e-15);
        assert!((normal_ppf(1e-10) + 6.361_340_902_404_056).abs() < 1e-13);
    }

    #[test]
    fn fp4_sort_order_and_dynamic_map_shape() {
        let (mids, order) = midpoints(&fp4_code());
        assert_eq!(
            order,
            [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]
        );
        assert_eq!(mids[7], 0.0);
        let d = dynamic_map_signed();
        assert_eq!(d.len(), 256);
        let derived = create_dynamic_map();
        let differ = d
            .iter()
            .zip(&derived)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .inspect(|(a, b)| assert!(a.to_bits().abs_diff(b.to_bits()) <= 2, "{a} vs {b}"))
            .count();
        println!("derived dynamic map: {differ} of 256 values differ from torch's");
        assert_eq!((d[127], d[255]), (0.0, 1.0));
        assert_eq!(d[0], -0.992_968_75);
        // A tie goes to the lower level.
        let (m, _) = midpoints(&NF4_CODE);
        assert_eq!(bucketize(m[10], &m), 10);
        assert_eq!(bucketize(f32::from_bits(m[10].to_bits() + 1), &m), 11);
    }
}
