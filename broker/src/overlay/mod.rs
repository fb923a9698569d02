//! Brokers of one instance joined in a tree (RFC 7, a draft: issue 11 is building it). So far
//! the tree's arithmetic (`topology`); the links, their routing and events follow.

pub mod topology;

pub use topology::{NextHop, Topology, TopologyError};
