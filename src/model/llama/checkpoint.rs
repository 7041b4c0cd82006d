//! Gradient checkpointing per decoder layer (Chen et al. 2016, *Training Deep Nets with
//! Sublinear Memory Cost*; transformers' `gradient_checkpointing_enable()`).
//!
//! The forward runs each layer on its detached input and keeps only that input: the graph of a
//! layer is dropped as soon as its output exists. The backward walks the layers from the last:
//! layer i is run again on its saved input (now a leaf that asks for a gradient), and candle's
//! `backward` of ⟨layer output, gradient arriving from layer i + 1⟩ gives the gradient for
//! layer i − 1 and the gradients of layer i's trainable tensors (LoRA A and B, a prefix, a
//! bottleneck adapter, full fine-tuning's weights), which the caller adds up.
//!
//! Memory: the inputs of all layers, `L·B·T·C` values, plus one layer's graph at a time, instead
//! of every layer's graph. Cost: every layer's forward runs twice (≈ a third more compute for a
//! LoRA step, whose backward skips the frozen weights' gradients).
//!
//! Dropout masks must come out the same in the re-run: they do with the trainer's seeded masks
//! (`peft::DropoutRng`: a function of seed, micro-batch and layer), not with candle's unseeded
//! dropout.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::{ForwardOptions, Input, Llama, StepTensors};
use crate::Result;

/// What [`Llama::forward_hidden_checkpointed`] keeps for the backward.
pub struct CheckpointedForward {
    /// The embeddings with their graph (a leaf unless the embeddings train).
    embeddings: Tensor,
    /// Each layer's input, detached: `inputs[0]` is the embeddings' value.
    inputs: Vec<Tensor>,
    /// The last layer's output as a leaf: the gradient the head's backward leaves here starts
    /// the walk back.
    last: Var,
    step: StepTensors,
}

impl CheckpointedForward {
    /// The leaf the final norm was applied to: look its gradient up in the head's `GradStore`.
    pub fn last_hidden(&self) -> &Tensor {
        self.last.as_tensor()
    }
}

impl Llama {
    /// The final hidden states `(B, T, C)` as [`Llama::forward_hidden`] computes them, with
    /// gradient checkpointing: the returned tensor's graph reaches back only to the final norm;
    /// [`Llama::backward_checkpointed`] carries the gradient through the layers.
    pub fn forward_hidden_checkpointed(
        &self,
        input_ids: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<(Tensor, CheckpointedForward)> {
        let (embeddings, step) = self.prepare(Input::Ids(input_ids), opts, None, None)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = embeddings.detach();
        {
            let s = step.step();
            for i in 0..self.layers.len() {
                let out = self.block_forward(i, &x, &s, None, None)?.detach();
                inputs.push(std::mem::replace(&mut x, out));
            }
        }
        let last = Var::from_tensor(&x)?;
        let h = self.norm.forward(last.as_tensor())?;
        let ck = CheckpointedForward {
            embeddings,
            inputs,
            last,
            step,
        };
        Ok((h, ck))
    }

    /// The backward through the layers of a checkpointed forward: `grad_last` is the gradient
    /// at [`CheckpointedForward::last_hidden`] (from the backward of the loss). Calls `on_grads`
    /// with each layer's `GradStore` (last layer first) and, when the embeddings have a graph,
    /// with the embeddings'; the trainable tensors' gradients are in them.
    pub fn backward_checkpointed(
        &self,
        ck: CheckpointedForward,
        grad_last: &Tensor,
        on_grads: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<()> {
        let CheckpointedForward {
            embeddings,
            mut inputs,
            last,
            step,
        } = ck;
        drop(last);
        let s = step.step();
        let mut grad = grad_last.detach();
        for i in (0..self.layers.len()).rev() {
            let input = inputs.pop().ok_or_else(|| {
                crate::Error::Training(format!("checkpointed forward lost layer {i}'s input"))
            })?;
            let x = Var::from_tensor(&input)?;
            drop(input);
            let out = self.block_forward(i, x.as_tensor(), &s, None, None)?;
            let grads = (out * &grad)?.sum_all()?.backward()?;
            on_grads(&grads)?;
            grad = match grads.get(x.as_tensor()) {
                Some(g) => g.detach(),
                None => grad.zeros_like()?,
            };
        }
        if embeddings.track_op() {
            let grads = (embeddings * &grad)?.sum_all()?.backward()?;
            on_grads(&grads)?;
        }
        Ok(())
    }
}
