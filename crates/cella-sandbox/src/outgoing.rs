//! Outgoing HTTP from `wasi:http` components: allowed only over HTTPS to the hosts the
//! function's manifest lists, with TLS verified inside the node against roots compiled into
//! it (the host's certificate store is not trusted), to an address resolved once and checked.
//!
//! Why each rule:
//! - **HTTPS only, verified here**: the network is the host's; only TLS terminated in the
//!   node keeps the request and the answer from the operator, and only a certificate for the
//!   allowed name proves the answer came from that host.
//! - **Resolved once, the connection pinned to that address, private addresses refused**: a
//!   name that resolves to loopback, a private network or link-local (DNS rebinding) would
//!   otherwise reach services next to the node; TLS would stop most of them, this stops the
//!   connection itself.
//! - **Bounded**: the answer is read up to a size limit and a deadline; a host that answers
//!   forever or without end gets an error, not the node's memory.
//!
//! Every refusal is a denial in the invocation's log (with the manifest line that allows the
//! host) and an `HTTP-request-denied` (or the precise error) for the guest.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::BTreeSet;

use cella_core::HttpHost;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

use crate::monitor::Monitor;

/// How the node makes outgoing requests (programmatic only: a node reads none of this from
/// the host, whose files it does not trust).
#[derive(Clone)]
pub struct OutgoingConfig {
    /// Roots TLS certificates must chain to: Mozilla's, compiled in.
    pub roots: Arc<rustls::RootCertStore>,
    /// Reach loopback and private addresses (tests on one machine; never on a node).
    pub allow_private_addresses: bool,
    /// Largest answer body read, in bytes.
    pub max_response_bytes: usize,
    /// Connecting, the TLS handshake and the whole answer must fit in this.
    pub timeout: Duration,
}

impl Default for OutgoingConfig {
    fn default() -> Self {
        OutgoingConfig {
            roots: Arc::new(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
            allow_private_addresses: false,
            max_response_bytes: 16 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for OutgoingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingConfig")
            .field("roots", &self.roots.len())
            .field("allow_private_addresses", &self.allow_private_addresses)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The outgoing-request hook of one invocation.
pub(crate) struct Outgoing {
    /// The hosts the function's manifest lists.
    pub(crate) hosts: BTreeSet<HttpHost>,
    pub(crate) config: OutgoingConfig,
    pub(crate) monitor: Arc<Monitor>,
    /// The node-wide count of refused requests.
    pub(crate) denied: Arc<AtomicU64>,
}

type Answer = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl Outgoing {
    pub(crate) fn send(
        &self,
        request: http::Request<WasiBody>,
    ) -> Box<dyn Future<Output = Answer> + Send> {
        let checked = self.check(&request);
        let config = self.config.clone();
        let (monitor, denied) = (self.monitor.clone(), self.denied.clone());
        Box::new(async move {
            let (host, port) = match checked {
                Ok(target) => target,
                Err(refusal) => return Err(refuse(&monitor, &denied, refusal)),
            };
            let address = match resolve(&host, port, config.allow_private_addresses).await {
                Ok(address) => address,
                Err(refusal) => return Err(refuse(&monitor, &denied, refusal)),
            };
            let exchange = exchange(request, &host, address, &config);
            match tokio::time::timeout(config.timeout, exchange).await {
                Ok(Ok(response)) => Ok((
                    response,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                )),
                Ok(Err(Error::TlsCertificateError)) => {
                    // The network answered for a listed host without proof that it is that
                    // host: an attack or a misconfiguration the owner should see.
                    monitor.deny(
                        "tls",
                        format!("{host}:{port} presented a certificate that does not verify"),
                    );
                    Err(Error::TlsCertificateError)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Error::ConnectionTimeout),
            }
        })
    }

    /// The host and port a request may go to, or why not.
    fn check(&self, request: &http::Request<WasiBody>) -> Result<(String, u16), Refusal> {
        let uri = request.uri();
        let host: String = uri.host().unwrap_or("").chars().take(253).collect();
        if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(Refusal::new(
                Error::HttpRequestDenied,
                format!("a request to {host} without TLS; only https:// is offered"),
            ));
        }
        let port = uri.port_u16().unwrap_or(443);
        if !self
            .hosts
            .iter()
            .any(|allowed| allowed.matches(&host, port))
        {
            let shown = if port == 443 {
                host.clone()
            } else {
                format!("{host}:{port}")
            };
            return Err(Refusal::new(
                Error::HttpRequestDenied,
                format!(
                    "a request to {shown}, which the manifest does not list; add \
                     `http = [\"{shown}\"]` under [permissions] to allow it"
                ),
            ));
        }
        Ok((host, port))
    }
}

/// A refused request: what the guest gets and what the log says.
struct Refusal {
    error: Error,
    detail: String,
}

impl Refusal {
    fn new(error: Error, detail: String) -> Self {
        Refusal { error, detail }
    }
}

fn refuse(monitor: &Monitor, denied: &AtomicU64, refusal: Refusal) -> Error {
    denied.fetch_add(1, Ordering::Relaxed);
    monitor.deny("http", refusal.detail);
    refusal.error
}

/// The one address the connection goes to: every address the name resolves to must be
/// public (a name that also resolves to a private one is refused whole).
async fn resolve(host: &str, port: u16, allow_private: bool) -> Result<SocketAddr, Refusal> {
    let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(found) => found.collect(),
        Err(e) => {
            return Err(Refusal::new(
                Error::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                },
                format!("{host} could not be resolved: {e}"),
            ));
        }
    };
    if let Some(private) = addresses.iter().find(|a| !is_public(a.ip()))
        && !allow_private
    {
        return Err(Refusal::new(
            Error::DestinationIpProhibited,
            format!(
                "{host} resolves to {}, a loopback, private or otherwise non-public address",
                private.ip()
            ),
        ));
    }
    addresses
        .first()
        .copied()
        .ok_or_else(|| Refusal::new(Error::DestinationNotFound, format!("{host} has no address")))
}

/// Whether `ip` is on the public internet (not loopback, private, link-local, shared,
/// documentation, multicast or unspecified; IPv4-mapped IPv6 judged as IPv4).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

/// Connects to `address`, verifies the certificate for `host`, sends the request and reads
/// the whole answer (bounded).
async fn exchange(
    mut request: http::Request<WasiBody>,
    host: &str,
    address: SocketAddr,
    config: &OutgoingConfig,
) -> Result<http::Response<WasiBody>, Error> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(Error::Connect)?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::InternalError(Some(e.to_string())))?
    .with_root_certificates(config.roots.clone())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Error::TlsCertificateError,
            _ => Error::Tls(e),
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::from)?;
    let driver = tokio::spawn(connection);
    // The request line carries only the path; the host goes in `Host`.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = request.uri().authority().map(|a| a.to_string());
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    if let Some(authority) = authority
        && let Ok(value) = http::HeaderValue::from_str(&authority)
    {
        request.headers_mut().insert(http::header::HOST, value);
    }
    let response = sender.send_request(request).await.map_err(Error::from)?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, config.max_response_bytes)
        .collect()
        .await
        .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => Error::HttpResponseBodySize(Some(config.max_response_bytes as u64)),
            Err(e) => Error::InternalError(Some(e.to_string())),
        })?
        .to_bytes();
    driver.abort();
    let body: WasiBody = Full::new(body)
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed_unsync();
    Ok(http::Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
