//! Sets of broker ranks as operators write them (RFC 7 §7): `all`, `3`, `1-7,9`. Parsed once
//! here for `modctl --rank` and the site file's `ranks` key; no knowledge of the instance
//! beyond the size a set is resolved against.

use std::fmt;
use std::str::FromStr;

/// `all`, or some ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RankSet {
    All,
    /// Inclusive ranges, sorted, neither overlapping nor touching.
    Ranges(Vec<(u32, u32)>),
}

/// Why a rank set does not parse, or names ranks the instance does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RankSetError {
    #[error("an empty rank set: write 'all', a rank (3) or a list (1-7,9)")]
    Empty,
    #[error("'{0}' is not a rank: ranks are whole numbers from 0 (write 'all', 3 or 1-7,9)")]
    NotARank(String),
    #[error("'{0}' is not a rank: 4294967294 (NODEID_UPSTREAM) and 4294967295 (NODEID_ANY) are reserved (RFC 1 §2.5)")]
    Reserved(u32),
    #[error("'{0}' runs backwards: write the lower rank first")]
    Backwards(String),
    #[error("rank {rank} is out of range: the instance has {size} brokers (ranks 0-{last})", last = .size.saturating_sub(1))]
    OutOfRange { rank: u32, size: u32 },
}

impl FromStr for RankSet {
    type Err = RankSetError;

    fn from_str(s: &str) -> Result<RankSet, RankSetError> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("all") {
            return Ok(RankSet::All);
        }
        if s.is_empty() {
            return Err(RankSetError::Empty);
        }
        let rank = |t: &str| match t.trim().parse::<u32>() {
            Ok(r) if r >= crate::NODEID_UPSTREAM => Err(RankSetError::Reserved(r)),
            Ok(r) => Ok(r),
            Err(_) => Err(RankSetError::NotARank(t.trim().to_string())),
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(RankSetError::NotARank(String::new()));
            }
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (rank(a)?, rank(b)?),
                None => (rank(part)?, rank(part)?),
            };
            if lo > hi {
                return Err(RankSetError::Backwards(part.to_string()));
            }
            ranges.push((lo, hi));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(RankSet::Ranges(merged))
    }
}

impl fmt::Display for RankSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RankSet::All => f.write_str("all"),
            RankSet::Ranges(r) => {
                let parts: Vec<String> =
                    r.iter().map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") }).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// The set of some ranks, in any order and with repeats: `[9, 1, 2, 3]` is `1-3,9`, to print
/// a list of ranks as an operator would write it.
impl FromIterator<u32> for RankSet {
    fn from_iter<I: IntoIterator<Item = u32>>(ranks: I) -> RankSet {
        let mut ranks: Vec<u32> = ranks.into_iter().collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut merged: Vec<(u32, u32)> = Vec::new();
        for r in ranks {
            match merged.last_mut() {
                Some(last) if last.1.checked_add(1) == Some(r) => last.1 = r,
                _ => merged.push((r, r)),
            }
        }
        RankSet::Ranges(merged)
    }
}

impl RankSet {
    pub fn contains(&self, rank: u32) -> bool {
        match self {
            RankSet::All => true,
            RankSet::Ranges(r) => r.iter().any(|&(lo, hi)| (lo..=hi).contains(&rank)),
        }
    }

    /// The ranks of an instance of `size` brokers, in order; an error names a rank beyond it.
    pub fn resolve(&self, size: u32) -> Result<Vec<u32>, RankSetError> {
        match self {
            RankSet::All => Ok((0..size).collect()),
            RankSet::Ranges(r) => {
                if let Some(&(_, hi)) = r.last().filter(|&&(_, hi)| hi >= size) {
                    return Err(RankSetError::OutOfRange { rank: hi, size });
                }
                Ok(r.iter().flat_map(|&(lo, hi)| lo..=hi).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> RankSet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn sets_parse_merge_and_print_as_operators_write_them() {
        assert_eq!(set("all"), RankSet::All);
        assert_eq!(set(" ALL "), RankSet::All);
        assert_eq!(set("3").to_string(), "3");
        assert_eq!(set("9,1-7").to_string(), "1-7,9");
        assert_eq!(set("1-3,4,6-8,7").to_string(), "1-4,6-8");
        assert_eq!(set("5-5").to_string(), "5");
        assert!(set("1-7,9").contains(9) && !set("1-7,9").contains(8) && set("all").contains(1 << 30));
        assert_eq!(set("0,2-3").resolve(4), Ok(vec![0, 2, 3]));
        assert_eq!(set("all").resolve(3), Ok(vec![0, 1, 2]));
    }

    #[test]
    fn a_list_of_ranks_prints_as_a_set() {
        assert_eq!([9, 1, 3, 2, 2].into_iter().collect::<RankSet>().to_string(), "1-3,9");
        assert_eq!([u32::MAX, 0].into_iter().collect::<RankSet>().to_string(), format!("0,{}", u32::MAX));
        assert_eq!(std::iter::empty::<u32>().collect::<RankSet>(), RankSet::Ranges(Vec::new()));
    }

    #[test]
    fn bad_sets_say_what_is_wrong() {
        assert_eq!("".parse::<RankSet>(), Err(RankSetError::Empty));
        assert_eq!("1,,2".parse::<RankSet>(), Err(RankSetError::NotARank(String::new())));
        assert_eq!("x".parse::<RankSet>(), Err(RankSetError::NotARank("x".into())));
        assert_eq!("-1".parse::<RankSet>(), Err(RankSetError::NotARank(String::new())));
        assert_eq!("7-1".parse::<RankSet>(), Err(RankSetError::Backwards("7-1".into())));
        // NODEID_ANY and NODEID_UPSTREAM are not ranks: modctl would act on the wrong broker.
        assert_eq!("4294967295".parse::<RankSet>(), Err(RankSetError::Reserved(0xFFFF_FFFF)));
        assert_eq!("1-4294967294".parse::<RankSet>(), Err(RankSetError::Reserved(0xFFFF_FFFE)));
        assert!("4294967293".parse::<RankSet>().is_ok());
        let err = set("1-7,9").resolve(8).expect_err("9 is beyond 8 brokers");
        assert_eq!(err, RankSetError::OutOfRange { rank: 9, size: 8 });
        assert_eq!(err.to_string(), "rank 9 is out of range: the instance has 8 brokers (ranks 0-7)");
    }
}
