//! Prometheus metrics. Labels carry function kinds and outcomes, never function or tenant
//! names: metrics are read by the operator, who is outside the trust boundary.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use cella_core::FunctionKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ErrorCode;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedBy {
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Worker {
    worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JoinOutcome {
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    invocations: Family<Outcome, Counter>,
    latency: Family<Kind, Histogram, fn() -> Histogram>,
    instances: Gauge<i64, std::sync::atomic::AtomicI64>,
    compilations: Counter<u64, AtomicU64>,
    precompiled_loads: Counter<u64, AtomicU64>,
    code_cache_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
    deployments: Counter<u64, AtomicU64>,
    integrity_failures: Counter<u64, AtomicU64>,
    host_calls: Counter<u64, AtomicU64>,
    denials: Family<DeniedBy, Counter>,
    bus_rejected: Family<Reason, Counter>,
    jobs: Family<Worker, Counter>,
    joins: Family<JoinOutcome, Counter>,
    async_submitted: Counter<u64, AtomicU64>,
    async_finished: Family<AsyncOutcome, Counter>,
    workers: Gauge<i64, std::sync::atomic::AtomicI64>,
    slots: Family<SlotState, Gauge<i64, std::sync::atomic::AtomicI64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotState {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AsyncOutcome {
    status: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~52 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cella");
        let invocations = Family::<Outcome, Counter>::default();
        let latency: Family<Kind, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let instances = Gauge::default();
        let compilations = Counter::default();
        let precompiled_loads = Counter::default();
        let code_cache_bytes = Gauge::default();
        let deployments = Counter::default();
        let integrity_failures = Counter::default();
        let host_calls = Counter::default();
        let denials = Family::<DeniedBy, Counter>::default();
        registry.register(
            "invocations",
            "Invocations by function kind and outcome (`ok` or an error code)",
            invocations.clone(),
        );
        registry.register(
            "invocation_duration_seconds",
            "Wall time of invocations, from authorization to response",
            latency.clone(),
        );
        registry.register(
            "instances_active",
            "Guest instances running right now",
            instances.clone(),
        );
        registry.register(
            "compilations",
            "Modules and components compiled to native code",
            compilations.clone(),
        );
        registry.register(
            "precompiled_loads",
            "Functions loaded from their sealed precompiled code instead of being compiled",
            precompiled_loads.clone(),
        );
        registry.register(
            "code_cache_bytes",
            "Bytes of compiled code held in memory (bounded by `code_cache_bytes`)",
            code_cache_bytes.clone(),
        );
        registry.register("deployments", "Successful deployments", deployments.clone());
        registry.register(
            "blob_integrity_failures",
            "Stored bundles or registry records refused because they failed authentication, their signature or their hash",
            integrity_failures.clone(),
        );
        registry.register(
            "host_calls",
            "Calls from guests into the host, all passing the monitor",
            host_calls.clone(),
        );
        registry.register(
            "host_call_denials",
            "Host calls the monitor refused, by the permission or limit that refused them",
            denials.clone(),
        );
        let bus_rejected = Family::<Reason, Counter>::default();
        let jobs = Family::<Worker, Counter>::default();
        let joins = Family::<JoinOutcome, Counter>::default();
        registry.register(
            "bus_messages_rejected",
            "Cluster messages refused: changed, sealed under another key or epoch, misdirected, replayed or stale",
            bus_rejected.clone(),
        );
        registry.register(
            "cluster_jobs",
            "Invocations this gateway had run on each worker (by the worker's node id)",
            jobs.clone(),
        );
        registry.register(
            "cluster_joins",
            "Workers that asked to join, by outcome (`admitted`, `refused`)",
            joins.clone(),
        );
        let async_submitted = Counter::default();
        let async_finished = Family::<AsyncOutcome, Counter>::default();
        registry.register(
            "async_invocations_submitted",
            "Asynchronous invocations accepted (stored durably, answered 202)",
            async_submitted.clone(),
        );
        registry.register(
            "async_invocations_finished",
            "Asynchronous invocations finished, by final status (`succeeded`, `failed`, `dead_letter`)",
            async_finished.clone(),
        );
        let workers = Gauge::default();
        let slots = Family::<SlotState, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        registry.register(
            "cluster_workers",
            "Workers that announced their capacity in the last 10 seconds",
            workers.clone(),
        );
        registry.register(
            "cluster_slots",
            "Invocation slots of those workers, by state (`total`, `free`)",
            slots.clone(),
        );
        Metrics {
            registry,
            workers,
            slots,
            async_submitted,
            async_finished,
            bus_rejected,
            jobs,
            joins,
            host_calls,
            denials,
            invocations,
            latency,
            instances,
            compilations,
            precompiled_loads,
            code_cache_bytes,
            deployments,
            integrity_failures,
        }
    }
}

/// Counts a running instance for as long as it lives.
pub(crate) struct InstanceGuard<'a>(&'a Metrics);

impl Drop for InstanceGuard<'_> {
    fn drop(&mut self) {
        self.0.instances.dec();
    }
}

impl Metrics {
    pub(crate) fn instance(&self) -> InstanceGuard<'_> {
        self.instances.inc();
        InstanceGuard(self)
    }

    pub(crate) fn invoked(
        &self,
        kind: FunctionKind,
        outcome: Result<(), ErrorCode>,
        took: Duration,
    ) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(code) => code.as_str(),
        };
        self.invocations
            .get_or_create(&Outcome {
                kind: kind.as_str(),
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&Kind {
                kind: kind.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// What the monitor saw during one invocation.
    pub(crate) fn monitored(&self, report: &cella_sandbox::MonitorReport) {
        self.host_calls.inc_by(report.host_calls);
        for (by, count) in report.denials_by_cause() {
            self.denials.get_or_create(&DeniedBy { by }).inc_by(count);
        }
    }

    pub(crate) fn compiled(&self) {
        self.compilations.inc();
    }

    pub(crate) fn precompiled_load(&self) {
        self.precompiled_loads.inc();
    }

    pub(crate) fn code_cached(&self, bytes: usize) {
        self.code_cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub(crate) fn deployed(&self) {
        self.deployments.inc();
    }

    pub(crate) fn integrity_failure(&self) {
        self.integrity_failures.inc();
    }

    /// A message from the bus was refused (`reason`: why).
    pub fn bus_rejected(&self, reason: &'static str) {
        self.bus_rejected.get_or_create(&Reason { reason }).inc();
    }

    /// A job ran on `worker`.
    pub fn job_ran_on(&self, worker: &str) {
        self.jobs
            .get_or_create(&Worker {
                worker: worker.to_owned(),
            })
            .inc();
    }

    pub(crate) fn async_submitted(&self) {
        self.async_submitted.inc();
    }

    pub(crate) fn async_finished(&self, status: &'static str) {
        self.async_finished
            .get_or_create(&AsyncOutcome { status })
            .inc();
    }

    /// The workers heard from lately and their slots.
    pub fn cluster_capacity(&self, workers: u64, total: u64, free: u64) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.workers.set(gauge(workers));
        self.slots
            .get_or_create(&SlotState { state: "total" })
            .set(gauge(total));
        self.slots
            .get_or_create(&SlotState { state: "free" })
            .set(gauge(free));
    }

    /// A worker asked to join and was admitted or refused.
    pub fn join(&self, admitted: bool) {
        let outcome = if admitted { "admitted" } else { "refused" };
        self.joins.get_or_create(&JoinOutcome { outcome }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
