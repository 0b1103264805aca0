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
//! - **Bounded**: each answer is read up to a size limit and a deadline, and one invocation
//!   has at most [`MAX_IN_FLIGHT`] requests open and a byte budget for all its answers
//!   together; a host that answers forever or without end gets an error, not the node's
//!   memory.
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

/// Outgoing requests one invocation may have open at once.
pub const MAX_IN_FLIGHT: usize = 4;

/// How the node makes outgoing requests (programmatic only: a node reads none of this from
/// the host, whose files it does not trust).
#[derive(Clone)]
pub struct OutgoingConfig {
    /// Roots TLS certificates must chain to: Mozilla's, compiled in.
    pub roots: Arc<rustls::RootCertStore>,
    /// Reach loopback and private addresses (tests on one machine; never on a node).
    pub allow_private_addresses: bool,
    /// Largest answer body read, in bytes; also what all of one invocation's answers
    /// together may hold.
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

/// What every invocation's hook shares: the settings and the TLS client configuration,
/// built once per sandbox.
pub(crate) struct OutgoingClient {
    config: OutgoingConfig,
    tls: Arc<rustls::ClientConfig>,
}

impl OutgoingClient {
    pub(crate) fn new(config: OutgoingConfig) -> Arc<Self> {
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
        .with_root_certificates(config.roots.clone())
        .with_no_client_auth();
        Arc::new(OutgoingClient {
            config,
            tls: Arc::new(tls),
        })
    }
}

/// The outgoing-request hook of one invocation.
pub(crate) struct Outgoing {
    /// The hosts the function's manifest lists.
    pub(crate) hosts: BTreeSet<HttpHost>,
    client: Arc<OutgoingClient>,
    pub(crate) monitor: Arc<Monitor>,
    /// The node-wide count of refused requests.
    pub(crate) denied: Arc<AtomicU64>,
    /// Open requests of this invocation.
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    /// Bytes of answers this invocation may still read.
    pub(crate) budget: Arc<std::sync::atomic::AtomicUsize>,
}

impl Outgoing {
    /// The hook of one invocation that may reach `hosts`.
    pub(crate) fn new(
        hosts: BTreeSet<HttpHost>,
        client: Arc<OutgoingClient>,
        monitor: Arc<Monitor>,
        denied: Arc<AtomicU64>,
    ) -> Self {
        let budget = client.config.max_response_bytes;
        Outgoing {
            hosts,
            client,
            monitor,
            denied,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            budget: Arc::new(std::sync::atomic::AtomicUsize::new(budget)),
        }
    }
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
        let permit = self.in_flight.clone().try_acquire_owned();
        let client = self.client.clone();
        let (monitor, denied, budget) = (
            self.monitor.clone(),
            self.denied.clone(),
            self.budget.clone(),
        );
        Box::new(async move {
            let (host, port) = match checked {
                Ok(target) => target,
                Err(refusal) => return Err(refuse(&monitor, &denied, refusal)),
            };
            let Ok(_permit) = permit else {
                let refusal = Refusal::new(
                    Error::ConnectionLimitReached,
                    format!("more than {MAX_IN_FLIGHT} outgoing requests open at once"),
                );
                return Err(refuse(&monitor, &denied, refusal));
            };
            let limit = budget.load(Ordering::Relaxed);
            let exchange = async {
                // Resolving counts against the deadline too; a resolver that fails is the
                // host's fault, not a refusal.
                let address = resolve(&host, port, client.config.allow_private_addresses).await?;
                exchange(request, &host, port, address, &client.tls, limit)
                    .await
                    .map_err(Refused::Failed)
            };
            match tokio::time::timeout(client.config.timeout, exchange).await {
                Err(_) => Err(Error::ConnectionTimeout),
                Ok(Err(Refused::Denied(refusal))) => Err(refuse(&monitor, &denied, refusal)),
                Ok(Err(Refused::Failed(Error::TlsCertificateError))) => {
                    // The network answered for a listed host without proof that it is that
                    // host: an attack or a misconfiguration the owner should see.
                    let refusal = Refusal::new(
                        Error::TlsCertificateError,
                        format!("{host}:{port} presented a certificate that does not verify"),
                    );
                    monitor.deny("tls", refusal.detail);
                    denied.fetch_add(1, Ordering::Relaxed);
                    Err(refusal.error)
                }
                Ok(Err(Refused::Failed(e))) => Err(e),
                Ok(Ok((response, used))) => {
                    budget.fetch_sub(used.min(limit), Ordering::Relaxed);
                    Ok((
                        response,
                        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                    ))
                }
            }
        })
    }
}

/// Why an allowed request got no answer.
enum Refused {
    /// A rule of the node refused it (a private address): a denial.
    Denied(Refusal),
    /// It failed on the way (DNS, TLS, the connection, the answer's size).
    Failed(Error),
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Self {
        Refused::Denied(refusal)
    }
}

impl Outgoing {
    /// The host and port a request may go to, or why not.
    fn check(&self, request: &http::Request<WasiBody>) -> Result<(String, u16), Refusal> {
        let uri = request.uri();
        let host = uri.host().unwrap_or("");
        if host.len() > 253 {
            return Err(Refusal::new(
                Error::HttpRequestUriInvalid,
                format!(
                    "a request to a host name of {} bytes (at most 253)",
                    host.len()
                ),
            ));
        }
        let host = host.to_owned();
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
async fn resolve(host: &str, port: u16, allow_private: bool) -> Result<SocketAddr, Refused> {
    let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
        Ok(found) => found.collect(),
        Err(e) => {
            return Err(Refused::Failed(Error::DnsError {
                rcode: Some(e.to_string()),
                info_code: None,
            }));
        }
    };
    if let Some(private) = addresses.iter().find(|a| !is_public(a.ip()))
        && !allow_private
    {
        return Err(Refused::Denied(Refusal::new(
            Error::DestinationIpProhibited,
            format!(
                "{host} resolves to {}, a loopback, private or otherwise non-public address",
                private.ip()
            ),
        )));
    }
    addresses
        .first()
        .copied()
        .ok_or(Refused::Failed(Error::DestinationNotFound))
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
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || (a == 192 && b == 88 && v4.octets()[2] == 99) // 6to4 relay anycast
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // Prefixes that carry an IPv4 address (NAT64, 6to4, IPv4-compatible) are judged
            // by it; the rest by their own ranges.
            let embedded = |high: u16, low: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (high >> 8) as u8,
                    high as u8,
                    (low >> 8) as u8,
                    low as u8,
                ))
            };
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public(embedded(s[1], s[2]));
            }
            if s[..6] == [0; 6] {
                return is_public(embedded(s[6], s[7]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || s[..4] == [0x100, 0, 0, 0] // discard-only
                || (s[0] == 0x2001 && s[1] < 0x200) // IETF protocol assignments, Teredo
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// Connects to `address`, verifies the certificate for `host`, sends the request and reads
/// the whole answer (bounded).
async fn exchange(
    mut request: http::Request<WasiBody>,
    host: &str,
    port: u16,
    address: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    limit: usize,
) -> Result<(http::Response<WasiBody>, usize), Error> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(Error::Connect)?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
            match certificate {
                true => Error::TlsCertificateError,
                false => Error::Tls(e),
            }
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::from)?;
    // Aborted when this request ends, however it ends.
    let driver = AbortOnDrop(tokio::spawn(connection));
    // The request line carries only the path; `Host` names the checked host.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let authority = match port {
        443 => host.to_owned(),
        port => format!("{host}:{port}"),
    };
    let value =
        http::HeaderValue::from_str(&authority).map_err(|_| Error::HttpRequestUriInvalid)?;
    request.headers_mut().insert(http::header::HOST, value);
    let response = sender.send_request(request).await.map_err(Error::from)?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => Error::HttpResponseBodySize(Some(limit as u64)),
            Err(e) => Error::InternalError(Some(e.to_string())),
        })?
        .to_bytes();
    drop(driver);
    let used = body.len();
    let body: WasiBody = Full::new(body)
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed_unsync();
    Ok((http::Response::from_parts(parts, body), used))
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "64:ff9b::101:101",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
