//! Start order: which modules may start together and which must wait. `requires` and
//! `after` are both edges here (the first also means "must exist", which the caller
//! checks); an `after` naming a module not in the set is ignored. A cycle is an error that
//! names it.

use std::collections::HashMap;

/// The names in a cycle, first repeated at the end: `a -> b -> a`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dependency cycle: {}", .0.join(" -> "))]
pub struct Cycle(pub Vec<String>);

/// One module's place in the graph.
pub struct Node<'a> {
    pub name: &'a str,
    /// Names it must start after (requires and after together).
    pub deps: Vec<&'a str>,
}

/// Indices of `nodes` in start levels: every module of a level depends only on modules of
/// earlier levels, so a level starts in parallel. Within a level, input order is kept.
pub fn levels(nodes: &[Node<'_>]) -> Result<Vec<Vec<usize>>, Cycle> {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name, i)).collect();
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            let mut d: Vec<usize> = n.deps.iter().filter_map(|d| index.get(d).copied()).collect();
            d.sort_unstable();
            d.dedup();
            d
        })
        .collect();
    let mut level: Vec<Option<usize>> = vec![None; nodes.len()];
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut placed = 0;
    while placed < nodes.len() {
        let ready: Vec<usize> = (0..nodes.len())
            .filter(|&i| level[i].is_none() && deps[i].iter().all(|&d| level[d].is_some_and(|l| l < out.len())))
            .collect();
        if ready.is_empty() {
            let left: Vec<usize> = (0..nodes.len()).filter(|&i| level[i].is_none()).collect();
            return Err(find_cycle(nodes, &deps, &left));
        }
        for &i in &ready {
            level[i] = Some(out.len());
        }
        placed += ready.len();
        out.push(ready);
    }
    Ok(out)
}

/// Every node left has an unplaced dependency: walk those from the first until a node repeats.
fn find_cycle(nodes: &[Node<'_>], deps: &[Vec<usize>], left: &[usize]) -> Cycle {
    let mut path: Vec<usize> = vec![left[0]];
    loop {
        let here = path[path.len() - 1];
        let Some(&next) = deps[here].iter().find(|d| left.contains(d)) else {
            // Cannot happen (a node with no unplaced dependency would have been placed).
            return Cycle(path.iter().map(|&i| nodes[i].name.to_string()).collect());
        };
        if let Some(start) = path.iter().position(|&p| p == next) {
            let mut names: Vec<String> = path[start..].iter().map(|&i| nodes[i].name.to_string()).collect();
            names.push(nodes[next].name.to_string());
            return Cycle(names);
        }
        path.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node<'a>(name: &'a str, deps: &[&'a str]) -> Node<'a> {
        Node { name, deps: deps.to_vec() }
    }

    #[test]
    fn levels_follow_dependencies() {
        let nodes = [node("app", &["kvs", "log"]), node("kvs", &[]), node("log", &["kvs"]), node("x", &["absent"])];
        assert_eq!(levels(&nodes).unwrap(), vec![vec![1, 3], vec![2], vec![0]]);
    }

    #[test]
    fn a_cycle_is_named() {
        let nodes = [node("a", &["b"]), node("b", &["c"]), node("c", &["b"]), node("d", &[])];
        let err = levels(&nodes).unwrap_err();
        assert_eq!(err.to_string(), "dependency cycle: b -> c -> b");
        let selfish = [node("a", &["a"])];
        assert_eq!(levels(&selfish).unwrap_err().0, vec!["a", "a"]);
    }
}
