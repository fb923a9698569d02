//! Embedding Switchboard in another program: an agent that wants routing and module loading
//! inside its own process starts a `Broker` from the library, loads a module, and talks to
//! it like any client. Run it after `cargo build --workspace`:
//!
//! ```text
//! cargo run -p switchboard --example embed
//! ```

use std::path::PathBuf;

use switchboard::{Broker, LoadRequest};
use switchboard_client::Client;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // target/<profile>/examples/embed -> target/<profile>/libecho.so
    let exe = std::env::current_exe()?;
    let target = exe.parent().and_then(|p| p.parent()).ok_or("no target directory")?;
    let echo = target.join("libecho.so");

    let dir = std::env::temp_dir().join(format!("switchboard-embed-{}", std::process::id()));
    let broker = Broker::builder().listen(dir.join("broker.sock")).start()?;
    let info = broker.load(LoadRequest { path: echo, ..Default::default() })?;
    println!("loaded {} ({}) from {}", info.name, info.kind, info.path.display());

    let mut client = Client::connect(broker.socket_path())?;
    let reply = client.rpc("echo.hello", &serde_json::json!({"hello": "from the agent"}))?;
    let answer: serde_json::Value = reply.decode()?;
    println!("echo answered: {answer}");

    broker.shutdown();
    let _ = std::fs::remove_dir(PathBuf::from(&dir));
    Ok(())
}
