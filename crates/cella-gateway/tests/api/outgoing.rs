//! Outgoing HTTPS from `wasi:http` components: only to the hosts the manifest lists, over TLS
//! verified in the node, never to a private address unless the node allows it; every refusal
//! is logged for the owner and counted.

use std::sync::Arc;

use cella_client::Method;
use cella_sandbox::OutgoingConfig;

use crate::harness::{Node, Options, clocks_random, guest};

/// An HTTPS server on loopback for `localhost`, with a certificate of its own; answers every
/// request with `upstream says hi`. Returns its port and its certificate.
async fn upstream() -> (u16, rustls::pki_types::CertificateDer<'static>) {
    upstream_answering(bytes::Bytes::from_static(b"upstream says hi")).await
}

/// Like [`upstream`], answering with `body`.
async fn upstream_answering(
    body: bytes::Bytes,
) -> (u16, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = cert.der().clone();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![der.clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_request| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(body),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, der)
}

fn trusting(cert: &rustls::pki_types::CertificateDer<'static>, loopback: bool) -> OutgoingConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    OutgoingConfig {
        roots: Arc::new(roots),
        allow_private_addresses: loopback,
        ..OutgoingConfig::default()
    }
}

/// A node making outgoing requests as `outgoing` says, and a tenant's `fetcher` (the
/// `hello-http` example) allowed to reach `localhost:port`.
async fn fetching(outgoing: OutgoingConfig, port: u16) -> (Node, cella_client::Client) {
    let node = Node::start_with(Options {
        outgoing: Some(outgoing),
        ..Options::default()
    })
    .await;
    let acme = node.tenant("acme").await;
    let allowed = clocks_random().allow(&format!("http=localhost:{port}"));
    acme.deploy("fetcher", guest("hello-http.wasm"), allowed)
        .await
        .unwrap();
    (node, acme)
}

async fn fetch(client: &cella_client::Client, function: &str, url: &str) -> String {
    let (status, _, body) = client
        .http(Method::GET, function, &format!("/fetch?{url}"), Vec::new())
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_https_reaches_only_listed_hosts_with_verified_tls() {
    let (port, cert) = upstream().await;
    let (other_port, _untrusted) = upstream().await;
    let node = Node::start_with(Options {
        outgoing: Some(trusting(&cert, true)),
        ..Options::default()
    })
    .await;
    let acme = node.tenant("acme").await;
    let allowed = clocks_random()
        .allow(&format!("http=localhost:{port}"))
        .allow(&format!("http=localhost:{other_port}"));
    acme.deploy("fetcher", guest("hello-http.wasm"), allowed)
        .await
        .unwrap();
    acme.deploy("sealed", guest("hello-http.wasm"), clocks_random())
        .await
        .unwrap();

    // A listed host, over TLS the node verified: the answer comes through.
    let granted = fetch(&acme, "fetcher", &format!("https://localhost:{port}/x")).await;
    assert!(
        granted.contains("GRANTED 200 OK upstream says hi"),
        "{granted}"
    );

    // Not listed (another name for the same server, another port, no list at all), or no
    // TLS: refused before any connection, and each refusal is in the log with its fix.
    for (function, url) in [
        ("fetcher", format!("https://127.0.0.1:{port}/")),
        (
            "fetcher",
            format!("https://localhost:{}/", port.wrapping_add(1)),
        ),
        ("fetcher", format!("http://localhost:{port}/")),
        ("sealed", format!("https://localhost:{port}/")),
    ] {
        let report = fetch(&acme, function, &url).await;
        assert!(report.contains("denied"), "{url}: {report}");
    }
    let logs = acme.logs("sealed").await.unwrap();
    assert!(
        logs[0]
            .log
            .contains(&format!("add `http = [\"localhost:{port}\"]`")),
        "{}",
        logs[0].log
    );
    let logs = acme.logs("fetcher").await.unwrap();
    assert!(
        logs.iter().any(|l| l.log.contains("without TLS")),
        "{logs:?}"
    );

    // A listed host whose certificate does not chain to the node's roots: no answer.
    let unverified = fetch(
        &acme,
        "fetcher",
        &format!("https://localhost:{other_port}/"),
    )
    .await;
    assert!(
        unverified.contains("denied") && !unverified.contains("upstream says hi"),
        "{unverified}"
    );
    let stats = acme.stats("fetcher").await.unwrap();
    assert_eq!(stats.denials.get("http"), Some(&3), "{stats:?}");
    assert_eq!(stats.denials.get("tls"), Some(&1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_name_that_resolves_to_a_private_address_is_refused() {
    let (port, cert) = upstream().await;
    // As on a real node: loopback and private addresses are not reachable.
    let (_node, acme) = fetching(trusting(&cert, false), port).await;
    let report = fetch(&acme, "fetcher", &format!("https://localhost:{port}/")).await;
    assert!(report.contains("denied"), "{report}");
    let logs = acme.logs("fetcher").await.unwrap();
    assert!(
        logs[0].log.contains("non-public address"),
        "{}",
        logs[0].log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_bound_is_refused_not_buffered() {
    let (port, cert) = upstream_answering(bytes::Bytes::from(vec![b'x'; 64 * 1024])).await;
    let bounded = OutgoingConfig {
        max_response_bytes: 16 * 1024,
        ..trusting(&cert, true)
    };
    let (_node, acme) = fetching(bounded, port).await;
    let report = fetch(&acme, "fetcher", &format!("https://localhost:{port}/")).await;
    assert!(
        report.contains("denied") && !report.contains("xxxx"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_never_comes_is_cut_off_at_the_deadline() {
    // An outside host that takes the connection and then says nothing, ever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let (_, cert) = upstream().await;
    let impatient = OutgoingConfig {
        timeout: std::time::Duration::from_secs(1),
        ..trusting(&cert, true)
    };
    let (_node, acme) = fetching(impatient, port).await;
    let started = std::time::Instant::now();
    let report = fetch(&acme, "fetcher", &format!("https://localhost:{port}/")).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "cut off at the deadline, not later: {:?}",
        started.elapsed()
    );
    assert!(
        report.contains("denied") && report.contains("Timeout"),
        "the guest gets a timeout error: {report}"
    );
}
