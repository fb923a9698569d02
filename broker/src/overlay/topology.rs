//! The instance's tree (RFC 7 §1): the complete k-ary tree over ranks 0..size in order.
//! Pure arithmetic: who a rank's parent and children are, whether a rank is in another's
//! subtree, and which link a message for a rank leaves by. It knows nothing of sockets.

/// A rank's place in a tree of `size` brokers with fanout `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub rank: u32,
    pub size: u32,
    pub fanout: u32,
}

/// Where a message for another rank leaves this broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// Down the link to this child.
    Child(u32),
    /// Up the link to the parent.
    Parent,
}

/// Why a topology cannot be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("rank {rank} is out of range: the instance has {size} brokers")]
    RankOutOfRange { rank: u32, size: u32 },
    #[error("fanout must be at least 1")]
    ZeroFanout,
}

impl Topology {
    pub fn new(rank: u32, size: u32, fanout: u32) -> Result<Topology, TopologyError> {
        if fanout == 0 {
            return Err(TopologyError::ZeroFanout);
        }
        if rank >= size {
            return Err(TopologyError::RankOutOfRange { rank, size });
        }
        Ok(Topology { rank, size, fanout })
    }

    /// The parent of `r` (None for the root).
    pub fn parent_of(&self, r: u32) -> Option<u32> {
        (r > 0).then(|| (r - 1) / self.fanout)
    }

    pub fn parent(&self) -> Option<u32> {
        self.parent_of(self.rank)
    }

    /// The children of `r`, in rank order.
    pub fn children_of(&self, r: u32) -> impl Iterator<Item = u32> {
        let (k, size) = (u64::from(self.fanout), u64::from(self.size));
        let first = u64::from(r) * k + 1;
        (first..(first + k).min(size)).map(|c| c as u32)
    }

    pub fn children(&self) -> impl Iterator<Item = u32> {
        self.children_of(self.rank)
    }

    /// Whether `n` is `r` or below it.
    pub fn in_subtree(&self, n: u32, r: u32) -> bool {
        let mut n = n;
        loop {
            if n == r {
                return true;
            }
            if n < r {
                return false;
            }
            match self.parent_of(n) {
                Some(p) => n = p,
                None => return false,
            }
        }
    }

    /// The link a message for rank `n` leaves by; None for this rank or a rank out of range.
    pub fn next_hop(&self, n: u32) -> Option<NextHop> {
        if n == self.rank || n >= self.size {
            return None;
        }
        if !self.in_subtree(n, self.rank) {
            return Some(NextHop::Parent);
        }
        // Climb from n until the rank whose parent is this one.
        let mut c = n;
        while let Some(p) = self.parent_of(c) {
            if p == self.rank {
                return Some(NextHop::Child(c));
            }
            c = p;
        }
        None
    }

    /// Links from the root to `r`.
    pub fn depth_of(&self, r: u32) -> u32 {
        let (mut d, mut n) = (0, r);
        while let Some(p) = self.parent_of(n) {
            d += 1;
            n = p;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rank's subtree, found by walking children from it: the reference for the
    /// arithmetic.
    fn subtree_by_walk(t: &Topology, r: u32) -> Vec<u32> {
        let mut out = vec![r];
        let mut i = 0;
        while i < out.len() {
            let kids: Vec<u32> = t.children_of(out[i]).collect();
            out.extend(kids);
            i += 1;
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn a_binary_tree_of_seven() {
        let t = Topology::new(1, 7, 2).expect("valid");
        assert_eq!(t.parent(), Some(0));
        assert_eq!(t.children().collect::<Vec<_>>(), [3, 4]);
        assert_eq!(t.parent_of(0), None);
        assert_eq!(t.children_of(2).collect::<Vec<_>>(), [5, 6]);
        assert_eq!(t.children_of(3).count(), 0);
        assert_eq!(t.next_hop(4), Some(NextHop::Child(4)));
        assert_eq!(t.next_hop(5), Some(NextHop::Parent));
        assert_eq!(t.next_hop(0), Some(NextHop::Parent));
        assert_eq!(t.next_hop(1), None);
        assert_eq!(t.next_hop(7), None);
        assert_eq!(t.depth_of(6), 2);
    }

    #[test]
    fn next_hops_lead_every_rank_to_every_other_along_the_tree() {
        for (size, k) in [(1, 2), (2, 1), (16, 2), (64, 2), (64, 3), (100, 7), (13, 12)] {
            for from in 0..size {
                let t0 = Topology::new(from, size, k).expect("valid");
                let subtree = subtree_by_walk(&t0, from);
                for to in 0..size {
                    assert_eq!(t0.in_subtree(to, from), subtree.contains(&to), "size {size} k {k}: {to} under {from}");
                    // Follow the hops: it must arrive, in at most two depths of the tree.
                    let (mut at, mut hops) = (from, 0);
                    while at != to {
                        let t = Topology::new(at, size, k).expect("valid");
                        at = match t.next_hop(to).expect("a hop") {
                            NextHop::Child(c) => {
                                assert_eq!(t.parent_of(c), Some(at));
                                c
                            }
                            NextHop::Parent => t.parent().expect("not the root"),
                        };
                        hops += 1;
                        assert!(hops <= 2 * size, "size {size} k {k}: {from} -> {to} loops");
                    }
                    assert!(
                        hops <= t0.depth_of(from) + t0.depth_of(to),
                        "size {size} k {k}: {from} -> {to} took {hops}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_topologies_are_refused() {
        assert_eq!(Topology::new(4, 4, 2), Err(TopologyError::RankOutOfRange { rank: 4, size: 4 }));
        assert_eq!(Topology::new(0, 4, 0), Err(TopologyError::ZeroFanout));
        assert_eq!(Topology::new(0, 1, 2).expect("a broker alone").next_hop(0), None);
    }
}
