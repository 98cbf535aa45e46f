//! A latency histogram of fixed size in the manner of HdrHistogram: every value is counted
//! in a bucket whose width is at most 1/128 of its lower bound, so a percentile is reported
//! within 0.8 % of the recorded value, whatever the number of samples. Values past
//! [`Histogram::VALUE_MAX`] are counted at that value and reported as clamped.

use serde::Serialize;

/// Values below this are counted exactly (one bucket each).
const EXACT: u64 = 256;
/// Buckets per power of two above [`EXACT`]: the relative width of a bucket is 1/128.
const SUB_BUCKETS: u64 = 128;
/// Powers of two covered above [`EXACT`]: values up to 2^40 (about 18 minutes in nanoseconds).
const OCTAVES: u64 = 32;
const BUCKETS: usize = (EXACT + OCTAVES * SUB_BUCKETS) as usize;

/// Counts of values (nanoseconds, in the load generator) in 4,352 buckets: 34 KiB whatever
/// the number of samples.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    clamped: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a histogram, in milliseconds when the values were nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Histogram {
    /// The largest value counted as itself; larger ones are counted as this.
    pub const VALUE_MAX: u64 = (1 << 40) - 1;

    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            clamped: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    fn index(value: u64) -> usize {
        if value < EXACT {
            return value as usize;
        }
        let exponent = u64::from(63 - value.leading_zeros()); // 8 ..= 39
        let shift = exponent - 7;
        let sub = (value >> shift) - SUB_BUCKETS; // 0 ..= 127
        (EXACT + (exponent - 8) * SUB_BUCKETS + sub) as usize
    }

    /// The largest value that falls in bucket `index` (HdrHistogram's "highest equivalent
    /// value"), so that a reported percentile is never below the value recorded.
    fn highest_in(index: usize) -> u64 {
        let index = index as u64;
        if index < EXACT {
            return index;
        }
        let k = index - EXACT;
        let exponent = k / SUB_BUCKETS + 8;
        let shift = exponent - 7;
        let low = (k % SUB_BUCKETS + SUB_BUCKETS) << shift;
        low + (1 << shift) - 1
    }

    pub fn record(&mut self, value: u64) {
        let value = if value > Self::VALUE_MAX {
            self.clamped += 1;
            Self::VALUE_MAX
        } else {
            value
        };
        self.counts[Self::index(value)] += 1;
        self.total += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += u128::from(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.total += other.total;
        self.clamped += other.clamped;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Values that were larger than [`Histogram::VALUE_MAX`].
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// The value at `quantile` (0 to 1) by nearest rank: the highest value of the bucket where
    /// the rank falls, never above the largest value recorded. `None` when empty.
    pub fn value_at(&self, quantile: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let quantile = quantile.clamp(0.0, 1.0);
        let rank = ((quantile * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::highest_in(index).min(self.max));
            }
        }
        Some(self.max)
    }

    /// p50, p90, p99, p99.9, max and mean, each value divided by `unit` (1e6 turns
    /// nanoseconds into milliseconds). `None` when empty.
    pub fn percentiles(&self, unit: f64) -> Option<Percentiles> {
        let at = |q: f64| self.value_at(q).map(|v| v as f64 / unit);
        Some(Percentiles {
            p50: at(0.5)?,
            p90: at(0.9)?,
            p99: at(0.99)?,
            p99_9: at(0.999)?,
            max: self.max as f64 / unit,
            mean: self.sum as f64 / self.total as f64 / unit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_within_one_128th() {
        let mut value = 0u64;
        while value <= Histogram::VALUE_MAX {
            let index = Histogram::index(value);
            let high = Histogram::highest_in(index);
            assert!(index < BUCKETS, "{value} -> {index}");
            assert!(high >= value, "{value}: bucket ends at {high}");
            assert!(
                (high - value) as f64 <= value as f64 / 128.0,
                "{value}: bucket ends at {high}"
            );
            // The next bucket starts right after this one.
            assert_eq!(Histogram::index(high + 1), index + 1, "{value}");
            value = value * 9 / 8 + 1;
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_within_the_bucket_width() {
        let mut h = Histogram::new();
        for ms in 1..=1000u64 {
            h.record(ms * 1_000_000);
        }
        let p = h.percentiles(1e6).unwrap();
        for (got, want) in [(p.p50, 500.0), (p.p99, 990.0), (p.p99_9, 999.0)] {
            assert!(
                got >= want && got <= want * (1.0 + 1.0 / 128.0),
                "{got} for {want}"
            );
        }
        assert_eq!(p.max, 1000.0);
        assert!((p.mean - 500.5).abs() < 1e-9);
        assert!(Histogram::new().percentiles(1.0).is_none());
    }

    #[test]
    fn values_past_the_largest_are_clamped_and_counted() {
        let mut h = Histogram::new();
        h.record(u64::MAX);
        h.record(Histogram::VALUE_MAX + 1);
        h.record(7);
        assert_eq!((h.len(), h.clamped()), (3, 2));
        assert_eq!(h.value_at(1.0), Some(Histogram::VALUE_MAX));
        assert_eq!(h.value_at(0.0), Some(7));
    }

    #[test]
    fn merged_histograms_count_both() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        for v in 0..100 {
            a.record(v);
            b.record(v + 100);
        }
        a.merge(&b);
        assert_eq!(a.len(), 200);
        assert_eq!(a.value_at(0.5), Some(99));
        assert_eq!(a.value_at(1.0), Some(199));
    }
}
