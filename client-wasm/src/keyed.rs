//! A small map kept as a list, in insertion order.
//!
//! The client holds few entries per map (subscriptions: the server allows 256 per connection;
//! requests in flight: usually a handful), and every `HashMap` or `BTreeMap` instantiation costs
//! the WebAssembly kilobytes of hashing and tree code. Lookups are linear; iteration follows
//! insertion (requests come out in the order they were sent).

/// Entries in insertion order; each key at most once (callers check before inserting).
#[derive(Debug)]
pub(crate) struct Keyed<K, V>(Vec<(K, V)>);

impl<K, V> Default for Keyed<K, V> {
    fn default() -> Self {
        Keyed(Vec::new())
    }
}

impl<K: PartialEq + Clone, V> Keyed<K, V> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn get<Q: PartialEq<K> + ?Sized>(&self, key: &Q) -> Option<&V> {
        self.0.iter().find(|(k, _)| key == k).map(|(_, v)| v)
    }

    pub(crate) fn get_mut<Q: PartialEq<K> + ?Sized>(&mut self, key: &Q) -> Option<&mut V> {
        self.0.iter_mut().find(|(k, _)| key == k).map(|(_, v)| v)
    }

    pub(crate) fn contains<Q: PartialEq<K> + ?Sized>(&self, key: &Q) -> bool {
        self.0.iter().any(|(k, _)| key == k)
    }

    /// Adds an entry whose key is not present yet.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        debug_assert!(!self.contains(&key), "a key is inserted once");
        self.0.push((key, value));
    }

    pub(crate) fn remove<Q: PartialEq<K> + ?Sized>(&mut self, key: &Q) -> Option<V> {
        let index = self.0.iter().position(|(k, _)| key == k)?;
        Some(self.0.remove(index).1)
    }

    pub(crate) fn keys(&self) -> Vec<K> {
        self.0.iter().map(|(k, _)| k.clone()).collect()
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.0.iter_mut().map(|(_, v)| v)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &(K, V)> {
        self.0.iter()
    }

    pub(crate) fn take(&mut self) -> Vec<(K, V)> {
        std::mem::take(&mut self.0)
    }
}
