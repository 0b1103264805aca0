//! Joining over the bus, attested both ways.
//!
//! 1. The worker sends a fresh nonce (`cella.join.hello`). The gateway answers with a fresh
//!    challenge and its own evidence, bound to its identity key and the worker's nonce.
//! 2. The worker checks that evidence under its policy (by default: the same build as itself,
//!    on the same kind of TEE) before it trusts anything the gateway says.
//! 3. The worker makes an X25519 key in its enclave and sends evidence binding it and the
//!    challenge (`cella.join.admit`). The gateway judges it under the cluster's policy and,
//!    only if every check passes, seals the cluster's secrets to that key (HPKE) and signs
//!    the grant with its attested identity key.
//! 4. The worker accepts only a grant signed by the key whose evidence it checked, for its
//!    own key and challenge, and opens it inside its enclave.
//!
//! A worker with the wrong measurement gets the failed checks and nothing else: no key, and
//! so no work (jobs are sealed under the key it never got). The bus sees evidence, public
//! keys and ciphertext only.
//!
//! A second gateway joins the same way, as [`Role::Gateway`]: what it is granted is the
//! registry's data key, so it can share the cluster's registry (see `registry_log.rs`).
//! Hellos go to one gateway of the queue group; the evidence goes to the gateway that
//! welcomed it, the only one that knows its challenge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::{Client, Message};
use cella_bus::{JoinGrant, JoinKey, JoinRequest};
use cella_runtime::Platform;
use cella_store::{ClusterSecrets, RegistryKey};
use cella_tee::{AttestationReport, Evidence, Policy, Verifier, report_data_for};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::subjects::{GATEWAYS, JOIN_ADMIT, JOIN_HELLO, admit_at};

/// The gateway's answer when it cannot take another join now (the worker asks again).
const BUSY: &str = "too many joins are pending; retry in a minute";

/// How long a challenge stays good, and how many may be outstanding at once.
const CHALLENGE_LIFETIME: Duration = Duration::from_secs(60);
const MAX_PENDING_CHALLENGES: usize = 1024;
const NONCE_BYTES: usize = 32;

#[derive(Serialize, Deserialize)]
struct Hello {
    nonce: String,
}

/// What a node joins as, and so what it is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs invocations: gets the cluster's secrets (bus key, blob key).
    Worker,
    /// Serves the API beside the others: gets the registry's data key.
    Gateway,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Worker => b"worker",
            Role::Gateway => b"gateway",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Welcome {
    challenge: String,
    /// Where to send the evidence: the subject of the gateway that holds the challenge.
    admit_to: String,
    /// The gateway's evidence, bound to its identity key and the worker's nonce.
    gateway: AttestationReport,
}

#[derive(Serialize, Deserialize)]
struct Admit {
    role: Role,
    challenge: String,
    public_key: String,
    evidence: Evidence,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Admission {
    Granted {
        epoch: u32,
        encapsulated: String,
        sealed: String,
        /// The gateway's signature over [`grant_statement`].
        signature: String,
    },
    Refused {
        reason: String,
    },
}

/// What the gateway signs: the grant, of this role, for this node's key and this challenge.
fn grant_statement(role: Role, challenge: &[u8], public_key: &[u8], grant: &JoinGrant) -> Vec<u8> {
    let mut out = b"cella join grant v2\0".to_vec();
    for part in [
        role.label(),
        challenge,
        public_key,
        &grant.epoch.to_le_bytes(),
        &grant.encapsulated,
        &grant.sealed_key,
    ] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum JoinFailure {
    #[error(
        "no gateway answers on `{JOIN_HELLO}`; start one with `cella gateway --nats URL` on the \
         same NATS server"
    )]
    NoGateway,
    #[error("the gateway's evidence does not pass this worker's policy: {0}")]
    GatewayNotTrusted(String),
    #[error(
        "the gateway refused this node: {0}. Run the build the cluster's policy names, or \
         have the gateway's operator add this node's measurement (`--worker-measurement`)"
    )]
    Refused(String),
    #[error("joining failed: {0}")]
    Protocol(String),
}

/// The verifiers of every TEE this build knows, trusting `policy`'s simulated anchors.
fn verify(
    policy: &Policy,
    evidence: &Evidence,
    expected: &cella_tee::ReportData,
    now: std::time::SystemTime,
) -> cella_tee::Verification {
    match policy.verify_with_anchors(evidence, Some(expected), now) {
        Ok(verification) => verification,
        Err(e) => cella_tee::Verification {
            checks: vec![cella_tee::Check {
                name: "policy",
                ok: false,
                expected: "well-formed simulated trust anchors".into(),
                actual: e.to_string(),
                fix: None,
            }],
            claims: None,
        },
    }
}

/// Whom a gateway admits: workers under one policy, gateways — which get the registry's data
/// key, far more than a worker — under another (by default this gateway's own build only), so
/// a build admitted as a worker during an upgrade cannot ask for the registry.
pub struct Policies {
    pub workers: Policy,
    pub gateways: Policy,
}

/// The gateway's side: admits workers and gateways under their [`Policies`].
pub struct Admissions {
    platform: Arc<Platform>,
    /// This gateway's id on the bus: admits come to its own subject.
    node: cella_bus::MessageId,
    policies: Policies,
    challenges: Mutex<HashMap<[u8; NONCE_BYTES], Instant>>,
}

impl Admissions {
    pub fn new(
        platform: Arc<Platform>,
        node: cella_bus::MessageId,
        policies: Policies,
    ) -> Arc<Self> {
        Arc::new(Admissions {
            platform,
            node,
            policies,
            challenges: Mutex::default(),
        })
    }

    /// Answers joins on the bus until the connection closes.
    pub(crate) async fn serve(self: Arc<Self>, client: Client) -> Result<(), async_nats::Error> {
        let mut hellos = client
            .queue_subscribe(JOIN_HELLO, GATEWAYS.to_owned())
            .await?;
        let mut admits = client.subscribe(admit_at(&self.node)).await?;
        loop {
            let (message, answer) = tokio::select! {
                Some(message) = hellos.next() => {
                    let answer = self.welcome(&message.payload);
                    (message, answer)
                }
                Some(message) = admits.next() => {
                    let answer = self.admit(&message.payload).await;
                    (message, answer)
                }
                else => return Ok(()),
            };
            if let Some(reply) = message.reply.clone() {
                let answer = answer.unwrap_or_else(|reason| {
                    serde_json::to_vec(&Admission::Refused { reason }).expect("serializes")
                });
                if let Err(e) = client.publish(reply, answer.into()).await {
                    tracing::warn!("could not answer a join: {e}");
                }
            }
        }
    }

    fn welcome(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let hello: Hello =
            serde_json::from_slice(payload).map_err(|e| format!("malformed hello: {e}"))?;
        let nonce = hex::decode(&hello.nonce).map_err(|_| "the nonce is not hex".to_owned())?;
        if nonce.len() != NONCE_BYTES {
            return Err(format!("the nonce must have {NONCE_BYTES} bytes"));
        }
        let mut challenge = [0u8; NONCE_BYTES];
        getrandom::fill(&mut challenge).map_err(|e| e.to_string())?;
        {
            let mut pending = self
                .challenges
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            pending.retain(|_, issued| issued.elapsed() < CHALLENGE_LIFETIME);
            if pending.len() >= MAX_PENDING_CHALLENGES {
                return Err(BUSY.into());
            }
            pending.insert(challenge, Instant::now());
        }
        let gateway = self.platform.attest(&nonce).map_err(|e| e.to_string())?;
        Ok(serde_json::to_vec(&Welcome {
            challenge: hex::encode(challenge),
            admit_to: admit_at(&self.node),
            gateway,
        })
        .expect("serializes"))
    }

    async fn admit(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let admit: Admit =
            serde_json::from_slice(payload).map_err(|e| format!("malformed admit: {e}"))?;
        let challenge: [u8; NONCE_BYTES] = hex::decode(&admit.challenge)
            .ok()
            .and_then(|c| c.try_into().ok())
            .ok_or("the challenge is malformed")?;
        // Each challenge admits once, and only while fresh.
        let issued = self
            .challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&challenge);
        if issued.is_none_or(|at| at.elapsed() >= CHALLENGE_LIFETIME) {
            return Err("unknown or expired challenge; start the join again".into());
        }
        let public_key = hex::decode(&admit.public_key).map_err(|_| "the key is not hex")?;
        let request = JoinRequest {
            public_key: public_key.clone(),
            evidence: admit.evidence,
        };
        // Grant what the cluster holds now: a rotation made on another gateway a moment ago
        // must not hand out the key it retired.
        self.platform
            .catch_up_registry()
            .await
            .map_err(|e| e.to_string())?;
        let secrets = self.platform.cluster_secrets().map_err(|e| e.to_string())?;
        let granted = match admit.role {
            Role::Worker => secrets.to_bytes(),
            Role::Gateway => self.platform.registry_key().to_bytes().to_vec(),
        };
        let policy = match admit.role {
            Role::Worker => &self.policies.workers,
            Role::Gateway => &self.policies.gateways,
        };
        let sim =
            cella_tee::sim::SimVerifier::new(&policy.sim_anchors).map_err(|e| e.to_string())?;
        let (sgx, tdx) = (
            cella_tee::DcapVerifier::sgx(),
            cella_tee::DcapVerifier::tdx(),
        );
        let verifiers: [&dyn Verifier; 4] = [&sim, &sgx, &tdx, &cella_tee::SnpVerifier];
        let admitted = cella_bus::admit(
            &request,
            &challenge,
            policy,
            &verifiers,
            self.platform.wall_time(),
            &granted,
            secrets.epoch,
        );
        self.platform.metrics().join(admitted.is_ok());
        let role = admit.role;
        let grant = admitted.map_err(|e| {
            tracing::warn!(?role, "refused a node: {e}");
            e.to_string()
        })?;
        let signature = self
            .platform
            .sign(&grant_statement(role, &challenge, &public_key, &grant));
        tracing::info!(epoch = grant.epoch, ?role, "admitted a node");
        Ok(serde_json::to_vec(&Admission::Granted {
            epoch: grant.epoch,
            encapsulated: hex::encode(&grant.encapsulated),
            sealed: hex::encode(&grant.sealed_key),
            signature: hex::encode(signature),
        })
        .expect("serializes"))
    }
}

async fn ask(client: &Client, subject: &str, body: Vec<u8>) -> Result<Message, JoinFailure> {
    let request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(Duration::from_secs(10)));
    client
        .send_request(subject.to_owned(), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => JoinFailure::NoGateway,
            _ => JoinFailure::Protocol(format!("{subject}: {e}")),
        })
}

/// The worker's side: joins through whichever gateway answers and returns the cluster's
/// secrets. The gateway must pass `policy`.
pub async fn join(
    client: &Client,
    platform: &Platform,
    policy: &Policy,
) -> Result<ClusterSecrets, JoinFailure> {
    let granted = join_as(Role::Worker, client, platform, policy).await?;
    ClusterSecrets::from_bytes(&granted)
        .ok_or_else(|| JoinFailure::Protocol("the secrets are malformed".into()))
}

/// A gateway's side: joins a running gateway of the cluster and returns the registry's data
/// key. The gateway must pass `policy`.
pub async fn join_registry(
    client: &Client,
    platform: &Platform,
    policy: &Policy,
) -> Result<RegistryKey, JoinFailure> {
    let granted = join_as(Role::Gateway, client, platform, policy).await?;
    RegistryKey::from_bytes(&granted)
        .ok_or_else(|| JoinFailure::Protocol("the registry key is malformed".into()))
}

/// Joins as `role` and returns what was granted, opened in this process.
async fn join_as(
    role: Role,
    client: &Client,
    platform: &Platform,
    policy: &Policy,
) -> Result<Vec<u8>, JoinFailure> {
    let protocol = |what: &str| JoinFailure::Protocol(what.to_owned());
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| protocol(&e.to_string()))?;
    let hello = serde_json::to_vec(&Hello {
        nonce: hex::encode(nonce),
    })
    .expect("serializes");
    let answer = ask(client, JOIN_HELLO, hello).await?;
    let welcome: Welcome = match serde_json::from_slice(&answer.payload) {
        Ok(welcome) => welcome,
        Err(_) => return Err(refusal_or(&answer.payload, "a malformed welcome")),
    };

    // Trust nothing the gateway says before its evidence passes.
    let gateway_key =
        hex::decode(&welcome.gateway.identity_key).map_err(|_| protocol("the gateway key"))?;
    let verification = verify(
        policy,
        &welcome.gateway.evidence,
        &report_data_for(&gateway_key, &nonce),
        platform.wall_time(),
    );
    if !verification.passed() {
        return Err(JoinFailure::GatewayNotTrusted(verification.failures()));
    }

    let challenge = hex::decode(&welcome.challenge).map_err(|_| protocol("the challenge"))?;
    let key = JoinKey::generate();
    let request = key
        .request(platform.attester(), &challenge)
        .map_err(|e| protocol(&e.to_string()))?;
    let admit = serde_json::to_vec(&Admit {
        role,
        challenge: welcome.challenge,
        public_key: hex::encode(&request.public_key),
        evidence: request.evidence,
    })
    .expect("serializes");
    if welcome
        .admit_to
        .strip_prefix(JOIN_ADMIT)
        .is_none_or(|id| !id.starts_with('.'))
    {
        return Err(protocol(
            "the welcome names no admission subject of a gateway",
        ));
    }
    let answer = ask(client, &welcome.admit_to, admit).await?;
    let admission: Admission = serde_json::from_slice(&answer.payload)
        .map_err(|_| protocol("the gateway's admission is malformed"))?;
    let (epoch, encapsulated, sealed, signature) = match admission {
        Admission::Refused { reason } => return Err(JoinFailure::Refused(reason)),
        Admission::Granted {
            epoch,
            encapsulated,
            sealed,
            signature,
        } => (epoch, encapsulated, sealed, signature),
    };
    let hex_field = |text: &str| hex::decode(text).map_err(|_| protocol("a grant field"));
    let grant = JoinGrant {
        epoch,
        encapsulated: hex_field(&encapsulated)?,
        sealed_key: hex_field(&sealed)?,
    };
    let statement = grant_statement(role, &challenge, &request.public_key, &grant);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &gateway_key)
        .verify(&statement, &hex_field(&signature)?)
        .map_err(|_| protocol("the grant is not signed by the attested gateway"))?;
    key.accept(&grant).map_err(|e| protocol(&e.to_string()))
}

/// A refusal the gateway sent instead of the expected answer, or `what` was malformed.
fn refusal_or(payload: &[u8], what: &str) -> JoinFailure {
    match serde_json::from_slice(payload) {
        Ok(Admission::Refused { reason }) if reason == BUSY => JoinFailure::Protocol(reason),
        Ok(Admission::Refused { reason }) => JoinFailure::Refused(reason),
        _ => JoinFailure::Protocol(format!("the gateway sent {what}")),
    }
}
