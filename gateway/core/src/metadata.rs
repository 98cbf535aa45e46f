//! An instance's metadata as registry events and entries hold it: string pairs in key order,
//! each key once, in one boxed slice (decision 0028).
//!
//! The fronts and the bus's protobuf carry metadata as a map (`BTreeMap<String, String>`); the
//! registry keeps it flat because it holds one per instance, a million of them at the scale the
//! benchmarks measure: a `BTreeMap` with even one pair allocates a whole node of about 540
//! bytes, while the slice takes 48 bytes a pair and nothing when empty (docs/benchmarks.md,
//! "Registry scale"). The order and the equality are a map's: pairs compared in key order, so
//! entries order and hash as they did with the map.

use std::collections::BTreeMap;

/// String pairs sorted by key, no key twice. Built from a map, or from pairs in any order
/// (a later pair of a key replaces an earlier one, as inserting into a map would).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Metadata(Box<[(String, String)]>);

impl Metadata {
    /// No pairs; allocates nothing.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `key`, by binary search.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.into_iter()
    }

    /// The pairs as a map, as the fronts and the bus's protobuf carry them.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

impl From<BTreeMap<String, String>> for Metadata {
    /// A map's pairs are already in key order and unique: moved in, not sorted.
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map.into_iter().collect())
    }
}

impl FromIterator<(String, String)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().collect();
        // Stable, so that of equal keys the later pair ends last; then each run of equal keys
        // keeps its last pair, as a map's insert would.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match kept.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => kept.push(pair),
            }
        }
        Self(kept.into_boxed_slice())
    }
}

impl<const N: usize> From<[(String, String); N]> for Metadata {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(("[a-d]{0,2}", "[x-z]{0,2}"), 0..8)
    }

    proptest! {
        /// Built from pairs in any order, it holds what a map built by inserting them holds,
        /// and orders, compares and iterates as that map does.
        #[test]
        fn it_holds_and_orders_what_a_map_would(a in pairs(), b in pairs()) {
            let map_a: BTreeMap<String, String> = a.iter().cloned().collect();
            let map_b: BTreeMap<String, String> = b.iter().cloned().collect();
            let (flat_a, flat_b): (Metadata, Metadata) =
                (a.into_iter().collect(), b.into_iter().collect());
            prop_assert_eq!(flat_a.to_map(), map_a.clone());
            prop_assert_eq!(flat_a.len(), map_a.len());
            prop_assert_eq!(flat_a.cmp(&flat_b), map_a.cmp(&map_b));
            prop_assert_eq!(flat_a == flat_b, map_a == map_b);
            prop_assert_eq!(Metadata::from(map_a.clone()), flat_a.clone());
            for (k, v) in &map_a {
                prop_assert_eq!(flat_a.get(k), Some(v.as_str()));
            }
            prop_assert_eq!(flat_a.get("no such key"), None);
            let iterated: Vec<(&str, &str)> = flat_a.iter().collect();
            let expected: Vec<(&str, &str)> =
                map_a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(iterated, expected);
        }
    }

    #[test]
    fn a_later_pair_of_a_key_replaces_the_earlier_one() {
        let m: Metadata = [
            ("zone".to_owned(), "a".to_owned()),
            ("rack".to_owned(), "1".to_owned()),
            ("zone".to_owned(), "b".to_owned()),
        ]
        .into();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("zone"), Some("b"));
        assert_eq!(m.get("rack"), Some("1"));
    }

    #[test]
    fn it_is_two_words_and_an_empty_one_holds_nothing() {
        let m = Metadata::new();
        assert!(m.is_empty());
        assert_eq!(m.iter().count(), 0);
        assert_eq!(std::mem::size_of::<Metadata>(), 16);
    }
}
