//! Embedding the broker in a program that has a tokio runtime of its own: the broker runs on
//! the lent runtime, its blocking methods work from the program's tasks, and it shuts down
//! there without a panic.

use switchboard::Broker;
use switchboard_client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_runs_on_a_lent_runtime_and_stops_inside_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("broker.sock");
    let broker = Broker::builder()
        .runtime(tokio::runtime::Handle::current())
        .listen(&socket)
        .start()
        .expect("start on the lent runtime");
    // A blocking client, on a thread of its own as a program would run it.
    let path = socket.clone();
    let pong = tokio::task::spawn_blocking(move || {
        let mut c = Client::connect(&path).expect("connect");
        c.rpc("broker.ping", &serde_json::json!({"seq": 7})).expect("ping").decode::<serde_json::Value>()
    })
    .await
    .expect("the client thread")
    .expect("decode");
    assert_eq!(pong["seq"], 7);
    assert!(broker.list().is_empty());
    let err = broker.remove("nosuch").expect_err("no such module");
    assert!(err.text.contains("no module named 'nosuch'"), "{}", err.text);
    broker.shutdown();
    assert!(!socket.exists(), "the socket file was left behind");
}

#[tokio::test]
async fn a_broker_with_its_own_runtime_is_used_and_dropped_inside_a_current_thread_runtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::builder().listen(dir.path().join("broker.sock")).start().expect("start");
    assert!(broker.list().is_empty());
    assert!(broker.remove("nosuch").is_err());
    drop(broker);
}
