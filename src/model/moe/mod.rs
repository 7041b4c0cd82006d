//! Mixture-of-experts routing, shared by the MoE adapter (`peft/`, chapter 7) and the Mixtral
//! family's sparse blocks (chapter 8): a top-k router, the load-balancing losses and the
//! routing statistics. It sits in model/ because both users build on it and model/ is below
//! peft/.
//!
//! | file | what |
//! |---|---|
//! | `router.rs` | [`Router`]: `softmax(W·h + b)` → top-k experts and their weights (Shazeer et al. 2017) |
//! | `losses.rs` | the guide's `mean(P̄²)·E`, Switch/Mixtral's `E·Σ f·P` (Fedus et al. 2021), ST-MoE's z-loss (Zoph et al. 2022) |
//! | `stats.rs` | [`RoutingStats`]: load per expert, mean gate weight, routing entropy, collapse |
//!
//! Shapes: the tokens of a batch are flattened, `N = B·T`; `E` experts, `k` chosen per token.
//! Every loss takes an optional `(N,)` mask (1 = a real token, 0 = padding) and averages over the
//! real tokens only, as transformers' `load_balancing_loss_func` does with its attention mask.

pub mod losses;
pub mod router;
pub mod stats;

pub use losses::{guide_balance_loss, router_z_loss, switch_balance_loss};
pub use router::{Router, RouterConfig, Routing};
pub use stats::RoutingStats;
