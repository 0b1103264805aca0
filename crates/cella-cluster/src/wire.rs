//! How jobs, outcomes and state calls are written inside sealed messages: a JSON head (what
//! the message is) followed by the raw body (input, output, a state value), so large bodies
//! are not inflated by an encoding. Everything read here came off the bus: it is parsed with
//! bounds, and a message that does not parse is refused like a changed one.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use cella_core::FunctionRecord;
use cella_runtime::{ErrorCode, Job, Outcome, RemoteFailure, RuntimeError, Work};
use cella_sandbox::{CommandOutput, Denial, HttpResponse, LogTail, MonitorReport};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A message that is not what its subject promises.
#[derive(Debug, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct Malformed(pub String);

fn malformed(what: impl std::fmt::Display) -> Malformed {
    Malformed(what.to_string())
}

/// `head` as JSON, then `body`.
pub fn frame(head: &impl Serialize, body: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("message heads serialize");
    let mut out = Vec::with_capacity(4 + head.len() + body.len());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(body);
    out
}

/// The head and body of a framed message.
pub fn unframe<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, Bytes), Malformed> {
    let (len, rest) = bytes
        .split_at_checked(4)
        .ok_or_else(|| malformed("shorter than its length"))?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let (head, body) = rest
        .split_at_checked(len)
        .ok_or_else(|| malformed("head longer than the message"))?;
    let head = serde_json::from_slice(head).map_err(malformed)?;
    Ok((head, Bytes::copy_from_slice(body)))
}

#[derive(Serialize, Deserialize)]
struct JobHead {
    record: FunctionRecord,
    env: Vec<(String, String)>,
    work: WorkHead,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WorkHead {
    Command {
        args: Vec<String>,
    },
    Http {
        method: String,
        uri: String,
        headers: Vec<(String, String)>,
    },
}

/// Header values may be any bytes: they travel as base64.
fn headers_out(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), B64.encode(value.as_bytes())))
        .collect()
}

fn headers_in(
    pairs: Vec<(String, String)>,
    headers: &mut http::HeaderMap,
) -> Result<(), Malformed> {
    for (name, value) in pairs {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(malformed)?;
        let value = B64.decode(value).map_err(malformed)?;
        let value = http::HeaderValue::from_bytes(&value).map_err(malformed)?;
        headers.append(name, value);
    }
    Ok(())
}

pub fn encode_job(job: &Job) -> Vec<u8> {
    let (work, body): (WorkHead, &[u8]) = match &job.work {
        Work::Command { args, stdin } => (WorkHead::Command { args: args.clone() }, stdin),
        Work::Http(request) => (
            WorkHead::Http {
                method: request.method().as_str().to_owned(),
                uri: request.uri().to_string(),
                headers: headers_out(request.headers()),
            },
            request.body(),
        ),
    };
    let head = JobHead {
        record: job.record.clone(),
        env: job.env.clone(),
        work,
    };
    frame(&head, body)
}

pub fn decode_job(bytes: &[u8]) -> Result<Job, Malformed> {
    let (head, body): (JobHead, Bytes) = unframe(bytes)?;
    let work = match head.work {
        WorkHead::Command { args } => Work::Command { args, stdin: body },
        WorkHead::Http {
            method,
            uri,
            headers,
        } => {
            let mut request = http::Request::new(body);
            *request.method_mut() =
                http::Method::from_bytes(method.as_bytes()).map_err(malformed)?;
            *request.uri_mut() = uri.parse().map_err(malformed)?;
            headers_in(headers, request.headers_mut())?;
            Work::Http(request)
        }
    };
    Ok(Job {
        record: head.record,
        env: head.env,
        work,
    })
}

#[derive(Serialize, Deserialize)]
struct LogHead {
    /// The tail of stderr, base64.
    tail: String,
    dropped: u64,
    host_calls: u64,
    denials: Vec<(String, String)>,
    denials_not_logged: u64,
}

/// What refuses host calls, as the monitor names it; a name off the bus maps onto these.
const DENIAL_CAUSES: [&str; 4] = ["kv", "kv-quota", "http", "tls"];

fn log_out(log: &LogTail) -> LogHead {
    LogHead {
        tail: B64.encode(&log.bytes),
        dropped: log.dropped,
        host_calls: log.monitor.host_calls,
        denials: log
            .monitor
            .denials
            .iter()
            .map(|d| (d.by.to_owned(), d.detail.clone()))
            .collect(),
        denials_not_logged: log.monitor.denials_not_logged,
    }
}

fn log_in(head: LogHead) -> Result<LogTail, Malformed> {
    let denials = head
        .denials
        .into_iter()
        .map(|(by, detail)| Denial {
            by: DENIAL_CAUSES
                .into_iter()
                .find(|cause| *cause == by)
                .unwrap_or("other"),
            detail,
        })
        .collect();
    Ok(LogTail {
        bytes: Bytes::from(B64.decode(head.tail).map_err(malformed)?),
        dropped: head.dropped,
        monitor: Box::new(MonitorReport {
            host_calls: head.host_calls,
            denials,
            denials_not_logged: head.denials_not_logged,
        }),
    })
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OutcomeHead {
    Command {
        log: LogHead,
    },
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        log: LogHead,
    },
    Failed {
        code: String,
        message: String,
        log: Option<LogHead>,
    },
}

/// A worker's answer: the outcome, or the error with its code, message and log.
pub fn encode_outcome(outcome: &Result<Outcome, RuntimeError>) -> Vec<u8> {
    match outcome {
        Ok(Outcome::Command(output)) => frame(
            &OutcomeHead::Command {
                log: log_out(&output.log),
            },
            &output.stdout,
        ),
        Ok(Outcome::Http(response)) => frame(
            &OutcomeHead::Http {
                status: response.response.status().as_u16(),
                headers: headers_out(response.response.headers()),
                log: log_out(&response.log),
            },
            response.response.body(),
        ),
        Err(e) => frame(
            &OutcomeHead::Failed {
                code: e.code().as_str().to_owned(),
                message: e.to_string(),
                log: failure_log(e).map(|log| log_out(&log)),
            },
            b"",
        ),
    }
}

/// The log an error carries, as a tail (a remote error's as it came).
fn failure_log(e: &RuntimeError) -> Option<LogTail> {
    match e {
        RuntimeError::Remote(failure) => failure.log.clone(),
        RuntimeError::Run { source, .. } => Some(source.log().clone()),
        _ => e.log().map(|text| LogTail {
            bytes: Bytes::from(text),
            ..LogTail::default()
        }),
    }
}

pub fn decode_outcome(bytes: &[u8]) -> Result<Result<Outcome, RuntimeError>, Malformed> {
    let (head, body): (OutcomeHead, Bytes) = unframe(bytes)?;
    Ok(match head {
        OutcomeHead::Command { log } => Ok(Outcome::Command(CommandOutput {
            stdout: body,
            log: log_in(log)?,
        })),
        OutcomeHead::Http {
            status,
            headers,
            log,
        } => {
            let mut response = http::Response::new(body);
            *response.status_mut() = http::StatusCode::from_u16(status).map_err(malformed)?;
            headers_in(headers, response.headers_mut())?;
            Ok(Outcome::Http(HttpResponse {
                response,
                log: log_in(log)?,
            }))
        }
        OutcomeHead::Failed { code, message, log } => {
            Err(RuntimeError::Remote(Box::new(RemoteFailure {
                code: ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal),
                message,
                log: log.map(log_in).transpose()?,
            })))
        }
    })
}

/// A worker's call on a function's key-value state (the value, for `set`, is the body).
#[derive(Debug, Serialize, Deserialize)]
pub struct StateCall {
    pub function: String,
    /// The owner of the function in the job's record: the state is theirs only.
    pub owner: String,
    /// For a synchronous invocation, the hex id of the request that carried it: writes are
    /// taken only while it is in flight, from the one worker that runs it. Empty for an
    /// asynchronous job, whose writes reach the gateway only with its outcome.
    #[serde(default)]
    pub job: String,
    pub op: StateOp,
    /// The key, base64.
    pub key: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StateOp {
    Get,
    Set,
    Delete,
}

/// The gateway's answer to a [`StateCall`] (a value read is the body).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateAnswer {
    /// `get`: whether a value was found; `delete`: whether one existed; `set`: true.
    Done {
        found: bool,
    },
    Full {
        would_be: u64,
        limit: u64,
    },
    Unavailable {
        reason: String,
    },
}

pub fn encode_key(key: &[u8]) -> String {
    B64.encode(key)
}

pub fn decode_key(key: &str) -> Result<Vec<u8>, Malformed> {
    B64.decode(key).map_err(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_refuse_lengths_past_their_end() {
        let framed = frame(&StateOp::Get, b"body");
        let (op, body): (StateOp, Bytes) = unframe(&framed).unwrap();
        assert_eq!((op, &body[..]), (StateOp::Get, &b"body"[..]));
        for cut in 0..framed.len() - 4 {
            assert!(unframe::<StateOp>(&framed[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = framed.clone();
        long[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unframe::<StateOp>(&long).is_err());
    }

    #[test]
    fn failures_keep_their_code_message_and_log() {
        let failure = RuntimeError::Remote(Box::new(RemoteFailure {
            code: ErrorCode::Timeout,
            message: "took too long".into(),
            log: Some(LogTail {
                bytes: Bytes::from_static(b"last words"),
                dropped: 3,
                monitor: Box::new(MonitorReport {
                    host_calls: 7,
                    denials: vec![Denial {
                        by: "kv",
                        detail: "no kv".into(),
                    }],
                    denials_not_logged: 1,
                }),
            }),
        }));
        let decoded = decode_outcome(&encode_outcome(&Err(failure))).unwrap();
        let Err(RuntimeError::Remote(back)) = decoded else {
            panic!("expected a remote failure");
        };
        assert_eq!(back.code, ErrorCode::Timeout);
        assert_eq!(back.message, "took too long");
        let log = back.log.unwrap();
        assert_eq!((&log.bytes[..], log.dropped), (&b"last words"[..], 3));
        assert_eq!(log.monitor.host_calls, 7);
        assert_eq!(log.monitor.denials[0].by, "kv");
        assert_eq!(log.monitor.denials_not_logged, 1);
    }
}
