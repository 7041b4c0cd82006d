//! Supervised fine-tuning: the trainer that runs cell by cell.
