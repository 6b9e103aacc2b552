//! Token ranges: the Murmur3 ring, `(i64::MIN, i64::MAX]`, cut into equal
//! splits that the source scans in parallel. The cut depends only on the
//! number of splits, so a restarted source finds the same ranges for the
//! positions it recorded.

/// One range of tokens, `(start, end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenRange {
    pub(crate) start: i64,
    pub(crate) end: i64,
}

/// The whole ring in `splits` ranges of (nearly) equal width, in token order.
pub(crate) fn split_ring(splits: u32) -> Vec<TokenRange> {
    let splits = i128::from(splits.max(1));
    let (min, max) = (i128::from(i64::MIN), i128::from(i64::MAX));
    let width = max - min;
    let bound = |k: i128| -> i64 {
        // min + width * k / splits, within i64 by construction.
        i64::try_from(min + width * k / splits).unwrap_or(if k == 0 { i64::MIN } else { i64::MAX })
    };
    (0..splits)
        .map(|k| TokenRange {
            start: bound(k),
            end: bound(k + 1),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_the_ring_without_gaps_or_overlaps() {
        for splits in [1, 2, 7, 8, 64, 1000] {
            let ranges = split_ring(splits);
            assert_eq!(ranges.len(), splits as usize);
            assert_eq!(ranges[0].start, i64::MIN);
            assert_eq!(ranges[ranges.len() - 1].end, i64::MAX);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{splits} splits");
                assert!(pair[0].start < pair[0].end);
            }
        }
    }
}
