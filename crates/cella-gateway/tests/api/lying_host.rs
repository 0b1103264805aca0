//! The runtime against a malicious host: a storage host that answers reads with lies of every
//! kind it can tell, and a network between client and node that alters, cuts or replays
//! bytes. Nothing the host makes up is ever run or returned as a result.

use std::sync::Arc;

use cella_store::lying::{Lie, LyingStore};

use crate::harness::{Node, Options, assert_api_error, clocks_random, guest, signed_client};

/// Every lie about a stored bundle or plug-in image is refused (`integrity_error`) and
/// counted; an I/O failure is an error too; the truth works again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_storage_host_never_gets_made_up_code_run() {
    let store = LyingStore::new();
    let backend = store.clone() as Arc<dyn cella_store::ObjectStore>;
    let options = || Options {
        blob_backend: Some(backend.clone()),
        ..Options::default()
    };
    let mut node = Node::start_with(options()).await;
    node.admin
        .add_plugin("quickjs", guest("quickjs.wasm"))
        .await
        .unwrap();
    let token = node.admin.create_tenant("acme").await.unwrap().token;
    let acme = signed_client(&node.url, token.clone()).await;
    acme.deploy("echo", guest("echo.wasm"), &[]).await.unwrap();
    acme.deploy("brotli", guest("brotli.wasm"), &[])
        .await
        .unwrap();
    acme.deploy_js(
        "hello",
        b"export default () => 'hi';".to_vec(),
        "quickjs",
        clocks_random(),
    )
    .await
    .unwrap();

    for lie in [
        Lie::FlipBit,
        Lie::Truncate,
        Lie::Empty,
        Lie::Swap,
        Lie::Missing,
        Lie::Fail,
    ] {
        // A fresh node with no precompiled code must read the bundles and images again.
        node = node.restart_with(options()).await;
        std::fs::remove_dir_all(node.data_dir().join("compiled")).unwrap();
        let acme = signed_client(&node.url, token.clone()).await;
        store.tell(lie);
        let told = store.lies_told();
        for function in ["echo", "hello"] {
            let result = acme.invoke(function, b"x".to_vec(), &[]).await;
            let (status, code) = match lie {
                // The host failed rather than lied: the node says so, runs nothing, and
                // keeps the storage's own words for the operator's log.
                Lie::Fail => (503, "unavailable"),
                _ => (500, "integrity_error"),
            };
            let message = assert_api_error(result, status, code);
            assert!(!message.contains("panicked"), "{lie:?}: {message}");
            if lie == Lie::Fail {
                assert!(message.contains("error id"), "{message}");
            }
        }
        assert!(store.lies_told() > told, "{lie:?} was never told");
        let metrics = node.metrics().await;
        let refusals_counted = !metrics.contains("cella_blob_integrity_failures_total 0");
        assert_eq!(refusals_counted, lie != Lie::Fail, "{lie:?}: {metrics}");
        store.tell(Lie::Honest);
        let echoed = acme.invoke("echo", b"truth".to_vec(), &[]).await.unwrap();
        assert_eq!(&echoed.output[..], b"truth", "{lie:?}");
        let hello = acme.invoke("hello", Vec::new(), &[]).await.unwrap();
        assert_eq!(&hello.output[..], b"hi", "{lie:?}");
    }
}

/// What the lying network does to the bytes between a client and the node.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tamper {
    Honest,
    /// Flips one bit of what the node sends, this many bytes in.
    FlipFromNode(usize),
    /// Flips one bit of every byte the client sends from this offset on.
    FlipFromClient(usize),
    /// Cuts the connection after the node has sent this many bytes.
    CutFromNode(usize),
}

/// A TCP relay on loopback between clients and `node`, tampering as told and recording what
/// clients sent on the last connection (to replay it).
struct LyingNetwork {
    url: String,
    tamper: Arc<std::sync::Mutex<Tamper>>,
    recorded: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl LyingNetwork {
    async fn start(node: std::net::SocketAddr) -> LyingNetwork {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let tamper = Arc::new(std::sync::Mutex::new(Tamper::Honest));
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, r) = (tamper.clone(), recorded.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(node).await else {
                    continue;
                };
                let tamper = *t.lock().unwrap();
                r.lock().unwrap().clear();
                let (client_read, client_write) = client.into_split();
                let (node_read, node_write) = upstream.into_split();
                let (flip_up, flip_down, cut_down) = match tamper {
                    Tamper::Honest => (None, None, None),
                    Tamper::FlipFromClient(at) => (Some(at), None, None),
                    Tamper::FlipFromNode(at) => (None, Some(at), None),
                    Tamper::CutFromNode(at) => (None, None, Some(at)),
                };
                let up = pump(
                    client_read,
                    node_write,
                    flip_up,
                    true,
                    None,
                    Some(r.clone()),
                );
                tokio::spawn(up);
                let down = pump(node_read, client_write, flip_down, false, cut_down, None);
                tokio::spawn(down);
            }
        });
        LyingNetwork {
            url,
            tamper,
            recorded,
        }
    }

    fn tell(&self, tamper: Tamper) {
        *self.tamper.lock().unwrap() = tamper;
    }
}

/// Copies `from` to `to`, flipping a bit at offset `flip` (with `flip_rest`, of every byte from
/// there on), stopping at offset `cut`, and keeping a copy in `record`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    flip: Option<usize>,
    flip_rest: bool,
    cut: Option<usize>,
    record: Option<Arc<std::sync::Mutex<Vec<u8>>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut offset = 0;
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return;
        }
        let chunk = &mut buf[..n];
        if let Some(at) = flip {
            let last = if flip_rest {
                n
            } else {
                (at + 1).saturating_sub(offset).min(n)
            };
            for byte in chunk.iter_mut().take(last).skip(at.saturating_sub(offset)) {
                *byte ^= 0x01;
            }
        }
        if let Some(record) = &record {
            record.lock().unwrap().extend_from_slice(chunk);
        }
        let end = cut.map_or(n, |cut| cut.saturating_sub(offset).min(n));
        if to.write_all(&chunk[..end]).await.is_err() || end < n {
            return;
        }
        offset += n;
    }
}

/// Over RA-TLS, a network that alters or cuts bytes gets the client an error, never a wrong
/// answer, and a replayed request runs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_network_gets_errors_never_wrong_answers_and_replays_run_nothing() {
    let node = Node::start_with(Options {
        tls: true,
        ..Options::default()
    })
    .await;
    let exe = std::env::current_exe().unwrap();
    let anchor = std::fs::read_to_string(
        node.data_dir()
            .join(cella_tee::sim::SimPlatformFiles::ANCHOR),
    )
    .unwrap();
    let policy = cella_tee::Policy {
        measurements: vec![cella_tee::sim::measure_file(&exe).unwrap()],
        allow_simulated: true,
        sim_anchors: vec![anchor.trim().to_owned()],
        ..cella_tee::Policy::default()
    };
    let admin_token = Some(node.admin_token().to_owned());
    let admin = cella_client::Client::with_policy(&node.url, admin_token, &policy).unwrap();
    let token = admin.create_tenant("acme").await.unwrap().token;
    let key = cella_bundle::SigningKey::generate();
    let public = key.verifying_key().to_string();
    let direct = cella_client::Client::with_policy(&node.url, Some(token.clone()), &policy)
        .unwrap()
        .with_signing_key(key);
    direct.add_key(&public).await.unwrap();
    let kv = cella_client::DeployOptions::default().allow("kv");
    direct
        .deploy("count", guest("state.wasm"), kv)
        .await
        .unwrap();

    let address = node.url.trim_start_matches("https://").parse().unwrap();
    let network = LyingNetwork::start(address).await;
    let via =
        cella_client::Client::with_policy(&network.url, Some(token.clone()), &policy).unwrap();
    let incr = || vec!["incr".to_owned(), "n".to_owned()];
    let honest = via.invoke("count", Vec::new(), &incr()).await.unwrap();
    assert_eq!(&honest.output[..], b"1\n", "the relay itself is faithful");
    let request = network.recorded.lock().unwrap().clone();

    let attempt = async |tamper: Tamper| {
        network.tell(tamper);
        let via =
            cella_client::Client::with_policy(&network.url, Some(token.clone()), &policy).unwrap();
        let result = via.invoke("count", Vec::new(), &incr()).await;
        assert!(result.is_err(), "{tamper:?} gave an answer: {result:?}");
    };
    let counter = async || {
        let now = direct
            .invoke("count", Vec::new(), &["get".to_owned(), "n".to_owned()])
            .await
            .unwrap();
        String::from_utf8_lossy(&now.output).trim().to_owned()
    };
    // Requests altered on the way in never run.
    for offset in [100, 400, request.len() / 2] {
        attempt(Tamper::FlipFromClient(offset)).await;
    }
    assert_eq!(counter().await, "1", "an altered request ran");

    // The recorded request, replayed byte for byte on a new connection, runs nothing: TLS
    // keys are fresh for every connection.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut replay = tokio::net::TcpStream::connect(address).await.unwrap();
        replay.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            replay.read_to_end(&mut answer),
        )
        .await;
    }
    assert_eq!(counter().await, "1", "a replayed request ran");

    // Answers altered or cut on the way out are errors for the client, never wrong answers
    // (the request may have run: a network can always drop an answer).
    for tamper in [
        Tamper::FlipFromNode(100),
        Tamper::FlipFromNode(3000),
        Tamper::CutFromNode(1500),
    ] {
        attempt(tamper).await;
    }
    let runs = direct.logs("count").await.unwrap();
    assert!(
        runs.len() <= 1 + 2 + 3 + 1,
        "{} invocations ran",
        runs.len()
    );
}
