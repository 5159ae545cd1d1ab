//! A set of CPU ids in the kernel's list format (`0-3,8,10-11`), as sysfs and the command line
//! write them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ctx_common::record::MAX_CPUS;
use thiserror::Error;

/// A set of CPU ids, in the kernel's list format (`0-3,8,10-11`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuSet(BTreeSet<u32>);

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid CPU list {input:?}: {reason} (expected a list such as 0-3,8)")]
pub struct CpuListError {
    pub input: String,
    pub reason: &'static str,
}

impl CpuSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    pub fn insert(&mut self, cpu: u32) {
        self.0.insert(cpu);
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn max(&self) -> Option<u32> {
        self.0.last().copied()
    }

    #[must_use]
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        CpuSet(iter.into_iter().collect())
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CpuListError {
            input: s.to_owned(),
            reason,
        };
        let mut set = BTreeSet::new();
        for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let lo: u32 = lo.trim().parse().map_err(|_| err("not a number"))?;
            let hi: u32 = hi.trim().parse().map_err(|_| err("not a number"))?;
            if lo > hi {
                return Err(err("range runs backwards"));
            }
            if usize::try_from(hi).is_ok_and(|hi| hi >= MAX_CPUS) {
                return Err(err("CPU id beyond 8191"));
            }
            set.extend(lo..=hi);
        }
        Ok(CpuSet(set))
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut it = self.0.iter().copied().peekable();
        while let Some(lo) = it.next() {
            let mut hi = lo;
            while it.peek() == Some(&(hi + 1)) {
                hi += 1;
                it.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_round_trip() {
        for s in ["0", "0-3", "0-3,8,10-11", ""] {
            let set: CpuSet = s.parse().unwrap();
            assert_eq!(set.to_string(), s);
        }
        let set: CpuSet = "1-3\n".parse().unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!("3-1".parse::<CpuSet>().is_err());
        assert!("x".parse::<CpuSet>().is_err());
        assert!("0-9000".parse::<CpuSet>().is_err());
    }
}
