//! Data for fine-tuning: records in the formats people keep their data in, composed into one
//! dataset, rendered with the model's chat template and tokenized into batches with labels.
//!
//! ```text
//! records (JSON / JSONL: prompt/completion, messages, alpaca, text) -> Vec<Conversation>
//!   -> compose (several sources, limits, dedup, seeded split) -> JSONL
//!   -> template (apply_chat_template, role-safe tokenization) -> batch (labels with -100,
//!      truncation, packing, padding) -> Batch tensors for train::Trainer
//! ```

pub mod batch;
pub mod compose;
pub mod records;
pub mod template;
