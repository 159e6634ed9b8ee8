//! The store a node serves, which a snapshot install replaces.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use logkv::Store;
use parking_lot::RwLock;
use tokio::sync::watch;

/// The current store of a node and its generation (raised by every snapshot install).
/// Cheap to clone; clones share the same cell. A single-node server holds one that never
/// changes.
#[derive(Clone)]
pub struct StoreCell {
    current: Arc<RwLock<Store>>,
    generation: Arc<watch::Sender<u64>>,
    /// The generation again, for [`StoreCell::generation`]: read by every watch delivery,
    /// on every core, where the channel's lock would bounce its cache line between them.
    generation_now: Arc<AtomicU64>,
}

impl std::fmt::Debug for StoreCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreCell")
            .field("generation", &*self.generation.borrow())
            .finish_non_exhaustive()
    }
}

impl StoreCell {
    /// A cell holding `store` as generation `generation`.
    pub fn new(store: Store, generation: u64) -> StoreCell {
        StoreCell {
            current: Arc::new(RwLock::new(store)),
            generation: Arc::new(watch::Sender::new(generation)),
            generation_now: Arc::new(AtomicU64::new(generation)),
        }
    }

    /// The current store.
    pub fn get(&self) -> Store {
        self.current.read().clone()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.generation_now.load(Ordering::Acquire)
    }

    /// A receiver that sees every change of generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Replaces the store; returns the one it replaced.
    pub fn replace(&self, store: Store, generation: u64) -> Store {
        let old = std::mem::replace(&mut *self.current.write(), store);
        self.generation_now.store(generation, Ordering::Release);
        self.generation.send_replace(generation);
        old
    }
}
