//! The one place in the crate that turns a `dyn` value back into its concrete type.
//!
//! Callers never downcast a layer to learn what it can do: that is what the capability methods
//! of [`LinearLayer`](crate::model::linear::LinearLayer) are for (its base, its quantized
//! storage, its bias, its dense weight, its trainable parameters). What remains is a module
//! reaching *its own* layer type back out of the model's slot — peft's `LoraLayer` and
//! `ModulesToSaveLayer`, to add or switch adapters — through [`Linear::get`] /
//! [`Linear::get_mut`](crate::model::linear::Linear::get_mut), and reading the message of a
//! caught panic. Both are here, so that `grep downcast_` finds one module.
//!
//! [`Linear::get`]: crate::model::linear::Linear::get

use std::any::Any;

use crate::model::linear::LinearLayer;

/// The layer as a `T`, if it is one.
pub(crate) fn layer_ref<T: LinearLayer>(layer: &dyn LinearLayer) -> Option<&T> {
    let any: &dyn Any = layer;
    any.downcast_ref::<T>()
}

/// The layer as a `T`, mutably, if it is one.
pub(crate) fn layer_mut<T: LinearLayer>(layer: &mut dyn LinearLayer) -> Option<&mut T> {
    let any: &mut dyn Any = layer;
    any.downcast_mut::<T>()
}

/// The boxed layer taken out as a `T`, or given back.
pub(crate) fn into_layer<T: LinearLayer>(
    layer: Box<dyn LinearLayer>,
) -> Result<T, Box<dyn LinearLayer>> {
    if layer_ref::<T>(layer.as_ref()).is_none() {
        return Err(layer);
    }
    let any: Box<dyn Any> = layer;
    match any.downcast::<T>() {
        Ok(t) => Ok(*t),
        Err(_) => unreachable!("the type was checked just above"),
    }
}

/// The text of a panic payload caught by `catch_unwind` (a `&str` or a `String`), if any.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or(payload.downcast_ref::<String>().map(String::as_str))
}
