//! Undo for the projections, so that the writer drops a rejected command's
//! events from its live state without folding the ledger again.
//!
//! Every table of `State` is a [`Journaled`] one: reads go straight to the
//! table, and each change first notes, the first time a key changes after
//! the last [`Undo::mark`], what that key held. [`Undo::undo`] puts those
//! values back, which leaves the table exactly as it was at the mark. The
//! journal is kept only while [`Undo::record`] is on: a fold pays one
//! branch per change, and the writer pays one clone of each entry a
//! command changes.

use std::collections::BTreeMap;
use std::hash::Hash;

use rustc_hash::FxHashMap;

/// A projection that can return to its last mark.
pub trait Undo {
    /// Starts (or stops, dropping what was noted) keeping the journal.
    fn record(&mut self, on: bool);
    /// Forgets what was noted: the present state is the one `undo` returns
    /// to.
    fn mark(&mut self);
    /// Returns to the state at the last mark.
    fn undo(&mut self);
}

/// The tables a [`Journaled`] can wrap.
pub trait Table: Default {
    type Key: Clone + Eq + Hash + Ord;
    type Value: Clone;
    fn get_value(&self, key: &Self::Key) -> Option<&Self::Value>;
    fn get_value_mut(&mut self, key: &Self::Key) -> Option<&mut Self::Value>;
    fn put(&mut self, key: Self::Key, value: Self::Value) -> Option<Self::Value>;
    fn take(&mut self, key: &Self::Key) -> Option<(Self::Key, Self::Value)>;
}

impl<K: Clone + Eq + Hash + Ord, V: Clone> Table for FxHashMap<K, V> {
    type Key = K;
    type Value = V;
    fn get_value(&self, key: &K) -> Option<&V> {
        self.get(key)
    }
    fn get_value_mut(&mut self, key: &K) -> Option<&mut V> {
        self.get_mut(key)
    }
    fn put(&mut self, key: K, value: V) -> Option<V> {
        self.insert(key, value)
    }
    fn take(&mut self, key: &K) -> Option<(K, V)> {
        self.remove_entry(key)
    }
}

impl<K: Clone + Eq + Hash + Ord, V: Clone> Table for BTreeMap<K, V> {
    type Key = K;
    type Value = V;
    fn get_value(&self, key: &K) -> Option<&V> {
        self.get(key)
    }
    fn get_value_mut(&mut self, key: &K) -> Option<&mut V> {
        self.get_mut(key)
    }
    fn put(&mut self, key: K, value: V) -> Option<V> {
        self.insert(key, value)
    }
    fn take(&mut self, key: &K) -> Option<(K, V)> {
        self.remove_entry(key)
    }
}

/// A table that notes, while recording, what each key held before its
/// first change since the mark. Reads go through `Deref`; every change
/// goes through a method here, so none escapes the journal.
pub struct Journaled<T: Table> {
    table: T,
    /// `Some` while recording: each key changed since the mark, with its
    /// value then (`None`: absent).
    before: Option<FxHashMap<T::Key, Option<T::Value>>>,
}

impl<T: Table> Default for Journaled<T> {
    fn default() -> Self {
        Journaled {
            table: T::default(),
            before: None,
        }
    }
}

impl<T: Table + Clone> Clone for Journaled<T> {
    /// The table alone: a clone starts without a journal.
    fn clone(&self) -> Self {
        Journaled {
            table: self.table.clone(),
            before: None,
        }
    }
}

impl<T: Table + std::fmt::Debug> std::fmt::Debug for Journaled<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.table.fmt(f)
    }
}

impl<T: Table> std::ops::Deref for Journaled<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.table
    }
}

impl<T: Table> PartialEq for Journaled<T>
where
    T: PartialEq,
{
    /// Equal tables; the journal is not part of the value.
    fn eq(&self, other: &Self) -> bool {
        self.table == other.table
    }
}

impl<T: Table> Journaled<T> {
    /// Notes what `key` holds, the first time it changes since the mark.
    fn note(&mut self, key: &T::Key) {
        if let Some(before) = &mut self.before {
            if !before.contains_key(key) {
                before.insert(key.clone(), self.table.get_value(key).cloned());
            }
        }
    }

    pub fn get_mut(&mut self, key: &T::Key) -> Option<&mut T::Value> {
        self.note(key);
        self.table.get_value_mut(key)
    }

    /// The entry of `key`, inserted from `make` if absent.
    pub fn get_or_insert_with(
        &mut self,
        key: &T::Key,
        make: impl FnOnce() -> T::Value,
    ) -> &mut T::Value {
        self.note(key);
        if self.table.get_value(key).is_none() {
            self.table.put(key.clone(), make());
        }
        self.table
            .get_value_mut(key)
            .expect("the entry was just inserted")
    }

    pub fn insert(&mut self, key: T::Key, value: T::Value) -> Option<T::Value> {
        self.note(&key);
        self.table.put(key, value)
    }

    pub fn remove(&mut self, key: &T::Key) -> Option<T::Value> {
        self.remove_entry(key).map(|(_, value)| value)
    }

    /// Removes `key`, returning the stored key with its value.
    pub fn remove_entry(&mut self, key: &T::Key) -> Option<(T::Key, T::Value)> {
        self.note(key);
        self.table.take(key)
    }
}

impl<T: Table> Undo for Journaled<T> {
    fn record(&mut self, on: bool) {
        self.before = on.then(FxHashMap::default);
    }

    fn mark(&mut self) {
        if let Some(before) = self.before.as_mut().filter(|b| !b.is_empty()) {
            forget(before);
        }
    }

    fn undo(&mut self) {
        let Some(before) = &mut self.before else {
            return;
        };
        for (key, value) in before.drain() {
            match value {
                Some(value) => {
                    self.table.put(key, value);
                }
                None => {
                    self.table.take(&key);
                }
            }
        }
        forget(before);
    }
}

/// Empties a journal. Clearing a map sweeps its whole capacity, so one
/// that a large command grew is dropped instead: the commands after it
/// would each pay for its size.
fn forget<K, V>(before: &mut FxHashMap<K, V>) {
    if before.capacity() > JOURNAL_KEPT_CAPACITY {
        *before = FxHashMap::default();
    } else {
        before.clear();
    }
}

/// The most entries a journal keeps room for between commands.
const JOURNAL_KEPT_CAPACITY: usize = 1024;

/// A value changed whole (counters): kept at the mark while recording.
#[derive(Debug, Default)]
pub struct Kept<T: Clone> {
    value: T,
    at_mark: Option<T>,
}

impl<T: Clone> Clone for Kept<T> {
    /// The value alone: a clone starts without a journal.
    fn clone(&self) -> Self {
        Kept {
            value: self.value.clone(),
            at_mark: None,
        }
    }
}

impl<T: Clone> Kept<T> {
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Clone> std::ops::Deref for Kept<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Clone> Undo for Kept<T> {
    fn record(&mut self, on: bool) {
        self.at_mark = on.then(|| self.value.clone());
    }

    fn mark(&mut self) {
        if let Some(at_mark) = &mut self.at_mark {
            at_mark.clone_from(&self.value);
        }
    }

    fn undo(&mut self) {
        if let Some(at_mark) = &self.at_mark {
            self.value.clone_from(at_mark);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_returns_every_changed_key_to_its_value_at_the_mark() {
        let mut table: Journaled<FxHashMap<String, u32>> = Journaled::default();
        table.insert("a".into(), 1);
        table.insert("b".into(), 2);
        table.record(true);
        table.mark();
        *table.get_mut(&"a".to_owned()).unwrap() += 10;
        *table.get_mut(&"a".to_owned()).unwrap() += 10;
        table.remove(&"b".to_owned());
        table.insert("c".into(), 3);
        *table.get_or_insert_with(&"d".to_owned(), || 0) += 4;
        assert_eq!(table.len(), 3);
        table.undo();
        let mut now: Vec<_> = table.iter().map(|(k, v)| (k.clone(), *v)).collect();
        now.sort();
        assert_eq!(now, vec![("a".to_owned(), 1), ("b".to_owned(), 2)]);
    }

    #[test]
    fn a_mark_keeps_what_came_before_it() {
        let mut table: Journaled<BTreeMap<u64, Vec<u32>>> = Journaled::default();
        table.record(true);
        table.insert(1, vec![1]);
        table.mark();
        table.get_mut(&1).unwrap().push(2);
        table.insert(2, vec![]);
        table.undo();
        assert_eq!(*table, BTreeMap::from([(1, vec![1])]));
        let mut count: Kept<u64> = Kept::default();
        count.record(true);
        *count.get_mut() = 5;
        count.mark();
        *count.get_mut() = 7;
        count.undo();
        assert_eq!(*count, 5);
    }

    #[test]
    fn marks_in_a_row_each_start_a_new_journal_and_a_large_one_is_dropped() {
        let mut table: Journaled<FxHashMap<u32, u32>> = Journaled::default();
        table.record(true);
        for key in 0..10_000 {
            table.insert(key, key);
        }
        table.mark();
        let room = |t: &Journaled<FxHashMap<u32, u32>>| t.before.as_ref().map(|b| b.capacity());
        assert!(room(&table).unwrap() <= JOURNAL_KEPT_CAPACITY);
        table.insert(1, 100);
        table.mark();
        table.insert(2, 200);
        table.undo();
        assert_eq!((table.get(&1), table.get(&2)), (Some(&100), Some(&2)));
        assert_eq!(table.len(), 10_000);
    }

    #[test]
    fn without_recording_nothing_is_noted_or_undone() {
        let mut table: Journaled<FxHashMap<u32, u32>> = Journaled::default();
        table.insert(1, 1);
        table.mark();
        table.insert(1, 2);
        table.undo();
        assert_eq!(table.get(&1), Some(&2));
    }
}
