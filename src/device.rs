//! Device and dtype selection: `cpu`, `cuda`, `cuda:N`, `metal`, or `auto` (CUDA when the
//! crate is built with the `cuda` feature and a GPU answers, else CPU).

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Parses a device name: `auto`, `cpu`, `cuda`, `cuda:N`, `metal`.
///
/// `cuda` needs the crate's `cuda` feature; without it the error says so.
pub fn parse_device(name: &str) -> Result<Device> {
    match name.trim() {
        "auto" => Ok(best_device()),
        "cpu" => Ok(Device::Cpu),
        "metal" => Device::new_metal(0).map_err(|e| Error::Input(format!("device `metal`: {e}"))),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse::<usize>().map_err(|_| {
                    Error::Input(format!("device `{s}`: expected cuda:N with N a GPU index"))
                })?,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Input(format!(
                    "device `{s}`: this build has no CUDA support; rebuild with `--features cuda`"
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| Error::Input(format!("device `{s}`: {e}")))
        }
        other => Err(Error::Input(format!(
            "unknown device `{other}`; expected auto, cpu, cuda, cuda:N or metal"
        ))),
    }
}

/// CUDA:0 if the crate was built with `cuda` and a GPU answers, else CPU
/// (as `Device::cuda_if_available(0)`).
pub fn best_device() -> Device {
    Device::cuda_if_available(0).unwrap_or(Device::Cpu)
}

/// A short name of `device` for summaries ("cpu", "cuda:0", "metal").
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Parses a dtype name as torch spells it or short: `f32`/`float32`, `bf16`/`bfloat16`,
/// `f16`/`float16`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        other => Err(Error::Input(format!(
            "unknown dtype `{other}`; expected f32, bf16 or f16"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        assert_eq!(parse_dtype("bfloat16").unwrap(), DType::BF16);
        assert!(parse_dtype("int3")
            .unwrap_err()
            .to_string()
            .contains("int3"));
        assert!(parse_device("tpu").unwrap_err().to_string().contains("tpu"));
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }
}
