//! Write batches: puts and deletes over the stores of one state.

/// One change of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` of `store` to `value`.
    Put {
        /// The store.
        store: String,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` from `store`.
    Delete {
        /// The store.
        store: String,
        /// The key.
        key: Vec<u8>,
    },
}

/// Changes applied together, in order, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// Sets `key` of `store` to `value`.
    pub fn put(&mut self, store: &str, key: &[u8], value: &[u8]) {
        self.ops.push(BatchOp::Put {
            store: store.to_string(),
            key: key.to_vec(),
            value: value.to_vec(),
        });
    }

    /// Removes `key` from `store`.
    pub fn delete(&mut self, store: &str, key: &[u8]) {
        self.ops.push(BatchOp::Delete {
            store: store.to_string(),
            key: key.to_vec(),
        });
    }

    /// Appends the changes of `other` after these.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no changes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// About how many bytes of memory the changes hold (payloads plus
    /// allocation overheads), to bound what waits in memory.
    pub fn approximate_bytes(&self) -> usize {
        // Each op holds two or three heap buffers; ~32 bytes of bookkeeping each.
        const PER_BUFFER: usize = 32;
        let payload: usize = self
            .ops
            .iter()
            .map(|op| match op {
                BatchOp::Put { store, key, value } => {
                    store.len() + key.len() + value.len() + 3 * PER_BUFFER
                }
                BatchOp::Delete { store, key } => store.len() + key.len() + 2 * PER_BUFFER,
            })
            .sum();
        payload + self.ops.capacity() * std::mem::size_of::<BatchOp>()
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// The changes, in order, taken out of the batch.
    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}
