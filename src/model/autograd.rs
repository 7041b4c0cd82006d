//! Ops with a hand-written backward, for the training path.
//!
//! candle's autograd keeps every intermediate tensor of a graph until `backward` ends and, for
//! each node, allocates a zero gradient and adds into it — for every input of a binary op,
//! whether or not that input can ever need one. A block written with plain ops (RMSNorm in
//! seven ops, RoPE in six, attention scores → softmax → values in ten, each on a
//! `(B, H, T, S)` tensor) therefore costs several times the memory and passes that its maths
//! needs. PyTorch avoids this with fused kernels that have their own backward (`F.rms_norm`,
//! `scaled_dot_product_attention`); this module does the same for candle.
//!
//! The mechanism: the forward value is computed beforehand on detached tensors, outside the
//! graph (with candle's fused kernels where they exist); a custom op attaches it to the graph
//! of the inputs — its forward hands the value over (taking it, so it is not held twice) — and
//! its backward is a closure that computes the inputs' gradients from the output gradient and
//! whatever it captured (the saved tensors of PyTorch's `ctx.save_for_backward`).
//!
//! Devices: the op has a CPU and (with the `cuda` feature) a CUDA forward; callers use the plain
//! ops elsewhere ([`supported`]). The CUDA forward is a device copy and has not been run on a
//! GPU.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Shape, Storage, Tensor};

/// The gradients of an op's inputs from its output gradient: `None` for an input that needs
/// none (a frozen weight, a mask).
pub(crate) type BackwardFn<const N: usize> =
    Box<dyn Fn(&Tensor) -> Result<[Option<Tensor>; N]> + Send + Sync>;

/// Whether `attach*` works on this device (CPU and CUDA; Metal takes the plain ops).
pub(crate) fn supported(x: &Tensor) -> bool {
    x.device().is_cpu() || x.device().is_cuda()
}

/// The custom op: forward hands back the precomputed value; backward calls the closure.
struct Attached<const N: usize> {
    name: &'static str,
    value: Mutex<Option<Tensor>>,
    backward: BackwardFn<N>,
}

impl<const N: usize> Attached<N> {
    fn new(name: &'static str, value: &Tensor, backward: BackwardFn<N>) -> Result<Self> {
        Ok(Self {
            name,
            value: Mutex::new(Some(value.detach().contiguous()?)),
            backward,
        })
    }

    /// The value, taken out of the op so the graph keeps one copy of it (the op's result).
    fn take(&self) -> Result<Tensor> {
        let mut slot = self
            .value
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{}: poisoned lock", self.name)))?;
        slot.take().ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: forward value already used", self.name))
        })
    }

    fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(c) => Ok((c.try_clone(layout)?, value.shape().clone())),
            _ => candle_core::bail!("{}: the forward value is not on the cpu", self.name),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda(&self) -> Result<(candle_core::CudaStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(c) => Ok((c.try_clone(layout)?, value.shape().clone())),
            _ => candle_core::bail!("{}: the forward value is not on the gpu", self.name),
        }
    }
}

impl candle_core::CustomOp1 for Attached<1> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [g] = (self.backward)(grad)?;
        Ok(g)
    }
}

impl candle_core::CustomOp2 for Attached<2> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [a, b] = (self.backward)(grad)?;
        Ok((a, b))
    }
}

impl candle_core::CustomOp3 for Attached<3> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [a, b, c] = (self.backward)(grad)?;
        Ok((a, b, c))
    }
}

/// `value` (computed from `x` outside the graph) as a function of `x` with the given backward.
pub(crate) fn attach1(
    name: &'static str,
    x: &Tensor,
    value: &Tensor,
    backward: BackwardFn<1>,
) -> Result<Tensor> {
    x.apply_op1(Attached::new(name, value, backward)?)
}

/// [`attach1`] for two inputs.
pub(crate) fn attach2(
    name: &'static str,
    (a, b): (&Tensor, &Tensor),
    value: &Tensor,
    backward: BackwardFn<2>,
) -> Result<Tensor> {
    a.apply_op2(b, Attached::new(name, value, backward)?)
}

/// [`attach1`] for three inputs.
pub(crate) fn attach3(
    name: &'static str,
    (a, b, c): (&Tensor, &Tensor, &Tensor),
    value: &Tensor,
    backward: BackwardFn<3>,
) -> Result<Tensor> {
    a.apply_op3(b, c, Attached::new(name, value, backward)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// `y = 3x` attached with its backward gives the gradient 3, and the op can run once only.
    #[test]
    fn attached_value_and_gradient() {
        let x = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let value = (x.as_tensor().detach() * 3.0).unwrap();
        let y = attach1(
            "times-three",
            x.as_tensor(),
            &value,
            Box::new(|g| Ok([Some((g * 3.0)?)])),
        )
        .unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [3.0, 6.0, 9.0]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, [3.0, 3.0, 3.0]);
    }
}
