//! Packing (trl's `packing=True` with its default `packing_strategy="bfd"`): several examples
//! in one row of at most `max_length` tokens, placed best-fit decreasing ([`pack_bfd`]).
//!
//! Inside a row the position ids restart at 0 for every document and the segment ids number
//! the documents, so that [`Llama::forward_with`](crate::model::llama::Llama::forward_with)
//! lets no document attend to another: each document's logits are those it gets alone. The
//! label at the first token of every document is set to -100: the shifted loss would predict
//! it from the logits of the previous document's last token, across the boundary. (For the
//! first document it is never used anyway, so packed and unpacked data train on exactly the
//! same label tokens.)

use std::collections::BTreeSet;

use super::collate::Row;
use super::{TokenizedExample, IGNORE_INDEX};
use crate::error::{Error, Result};

/// Best-fit-decreasing bin packing of documents of `lengths` tokens into rows of `capacity`:
/// the documents are taken longest first (ties: lower index first) and each goes into the open
/// row with the *least* room that still fits it (ties: the row opened first), or into a new row.
/// Returns the rows in the order they were opened, each listing its documents' indices in the
/// order they were placed. O(n log n) with an ordered set of (room, row).
///
/// Like first-fit decreasing, BFD needs at most 11/9·OPT + O(1) rows (Johnson 1973) and in
/// practice wastes little beyond the last row; it is trl's default packing strategy. A document longer than
/// `capacity`, or empty, is an [`Error::Input`].
pub fn pack_bfd(lengths: &[usize], capacity: usize) -> Result<Vec<Vec<usize>>> {
    for (i, &len) in lengths.iter().enumerate() {
        if len == 0 || len > capacity {
            return Err(Error::Input(format!(
                "pack_bfd: document {i} has {len} tokens; expected 1..={capacity}"
            )));
        }
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    let mut room: BTreeSet<(usize, usize)> = BTreeSet::new(); // (free tokens, bin)
    for i in order {
        let len = lengths[i];
        let fit = room.range((len, 0)..).next().copied();
        match fit {
            Some((free, bin)) => {
                room.remove(&(free, bin));
                bins[bin].push(i);
                room.insert((free - len, bin));
            }
            None => {
                bins.push(vec![i]);
                room.insert((capacity - len, bins.len() - 1));
            }
        }
    }
    Ok(bins)
}

/// Concatenates documents `docs` into one packed row: positions restart at 0, segments count
/// up, and each document's first label is -100 so the loss never predicts across a boundary.
pub(super) fn pack_row(docs: &[usize], examples: &[TokenizedExample]) -> Row {
    let mut row = Row {
        input_ids: Vec::new(),
        labels: Vec::new(),
        position_ids: Vec::new(),
        segment_ids: Vec::new(),
    };
    for (s, &d) in docs.iter().enumerate() {
        let ex = &examples[d];
        row.input_ids.extend_from_slice(&ex.input_ids);
        row.labels.push(IGNORE_INDEX);
        row.labels.extend_from_slice(&ex.labels[1..]);
        row.position_ids.extend(0..ex.len() as u32);
        row.segment_ids
            .extend(std::iter::repeat_n(s as u32, ex.len()));
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_row_masks_document_starts() {
        let a = TokenizedExample::full(vec![1, 2, 3]);
        let b = TokenizedExample::full(vec![4, 5]);
        let row = pack_row(&[0, 1], &[a, b]);
        assert_eq!(row.input_ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(row.labels, vec![-100, 2, 3, -100, 5]);
        assert_eq!(row.position_ids, vec![0, 1, 2, 0, 1]);
        assert_eq!(row.segment_ids, vec![0, 0, 0, 1, 1]);
    }
}
