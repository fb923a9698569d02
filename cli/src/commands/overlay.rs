//! `overlay status`: the `overlay.status` tree of a broker's subtree (RFC 7 §6.3), drawn as
//! `flux overlay status` draws it, or as JSON.

use switchboard_client::Client;
use switchboard_protocol::{mgmt::OverlayStatus, NODEID_ANY};

use super::modules::decode;
use crate::{CliError, Context};

/// `rank` None: the broker modctl is connected to.
pub fn status(client: &mut Client, rank: Option<u32>, as_json: bool) -> Result<(), CliError> {
    let what = match rank {
        Some(r) => format!("overlay status of rank {r}"),
        None => "overlay status".to_string(),
    };
    let reply = client.rpc_on(rank.unwrap_or(NODEID_ANY), "overlay.status", &()).doing(&what)?;
    let tree: OverlayStatus = decode(&reply, &what)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&tree).unwrap_or_default());
    } else {
        print!("{}", draw(&tree));
    }
    Ok(())
}

/// The tree, a line per rank: `RANK HOST: STATE` (and ` (REASON)` when there is one), each
/// child below its parent after `├─ ` or, for the last, `└─ `, its own children indented by
/// `│  ` or three spaces.
pub fn draw(tree: &OverlayStatus) -> String {
    let mut out = String::new();
    out.push_str(&label(tree));
    out.push('\n');
    children(&tree.children, "", &mut out);
    out
}

fn children(kids: &[OverlayStatus], indent: &str, out: &mut String) {
    for (i, kid) in kids.iter().enumerate() {
        let last = i + 1 == kids.len();
        out.push_str(indent);
        out.push_str(if last { "└─ " } else { "├─ " });
        out.push_str(&label(kid));
        out.push('\n');
        let deeper = format!("{indent}{}", if last { "   " } else { "│  " });
        children(&kid.children, &deeper, out);
    }
}

fn label(n: &OverlayStatus) -> String {
    let host = if n.host.is_empty() { String::new() } else { format!(" {}", n.host) };
    let reason = n.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
    format!("{}{host}: {}{reason}", n.rank, n.state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(rank: u32, state: &str, reason: Option<&str>, children: Vec<OverlayStatus>) -> OverlayStatus {
        OverlayStatus {
            rank,
            state: state.into(),
            host: format!("node{rank}"),
            reason: reason.map(str::to_string),
            children,
        }
    }

    #[test]
    fn a_tree_is_drawn_as_flux_overlay_status_draws_it() {
        let tree = node(
            0,
            "full",
            None,
            vec![
                node(
                    1,
                    "partial",
                    None,
                    vec![
                        node(3, "full", None, vec![node(7, "full", None, vec![])]),
                        node(4, "lost", Some("link lost 12 s ago"), vec![]),
                    ],
                ),
                node(2, "full", None, vec![node(5, "offline", None, vec![]), node(6, "full", None, vec![])]),
            ],
        );
        let want = "\
0 node0: full
├─ 1 node1: partial
│  ├─ 3 node3: full
│  │  └─ 7 node7: full
│  └─ 4 node4: lost (link lost 12 s ago)
└─ 2 node2: full
   ├─ 5 node5: offline
   └─ 6 node6: full
";
        assert_eq!(draw(&tree), want);
    }

    #[test]
    fn a_lone_broker_is_one_line_and_a_missing_host_is_left_out() {
        assert_eq!(draw(&node(0, "full", None, vec![])), "0 node0: full\n");
        let mut anon = node(3, "partial", None, vec![]);
        anon.host.clear();
        assert_eq!(draw(&anon), "3: partial\n");
    }
}
