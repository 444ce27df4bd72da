//! One trace per order across its asynchronous hops. The W3C trace context travels as plain
//! `traceparent`/`tracestate` strings — on the outbox row, in the publish job, in the Kafka
//! headers, in the consume-notification job — and each hop continues it with the process's
//! propagator. Without an OpenTelemetry exporter there are no span contexts to write, and the
//! context that came in (the client's `traceparent`) is carried through unchanged.
//!
//! Job spans follow one shape for every queue: named `<queue> process`, with the messaging
//! attributes of the OpenTelemetry semantic conventions plus `job.attempt` and `job.outcome`,
//! and one `jobs_total{queue,outcome}` count and `job_duration_seconds{queue}` sample per run.

use std::{collections::HashMap, time::Instant};

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
    Context,
};
use serde::{Deserialize, Serialize};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// W3C trace context, as carried between processes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Injector for Fields<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for Fields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl TraceContext {
    /// The context of `span`, if OpenTelemetry is recording it.
    pub fn of_span(span: &Span) -> Option<Self> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut fields = HashMap::new();
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Fields(&mut fields)));
        let traceparent = fields.remove(TRACEPARENT)?;
        Some(Self {
            traceparent: Some(traceparent),
            tracestate: fields.remove(TRACESTATE).filter(|s| !s.is_empty()),
        })
    }

    /// The current span's context, or `fallback` when nothing is being recorded.
    pub fn current_or(fallback: &Self) -> Self {
        Self::of_span(&Span::current()).unwrap_or_else(|| fallback.clone())
    }

    pub fn to_context(&self) -> Context {
        let mut fields = HashMap::new();
        if let Some(tp) = &self.traceparent {
            fields.insert(TRACEPARENT.to_owned(), tp.clone());
        }
        if let Some(ts) = &self.tracestate {
            fields.insert(TRACESTATE.to_owned(), ts.clone());
        }
        global::get_text_map_propagator(|p| p.extract(&Fields(&mut fields)))
    }

    /// Makes `span` continue this context (call it before the span has children).
    pub fn adopt(&self, span: &Span) {
        if self.traceparent.is_some() {
            // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
            let _ = span.set_parent(self.to_context());
        }
    }

    /// The trace id, for log lines.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref()?.split('-').nth(1)
    }
}

/// Records the OpenTelemetry ids of `span` in its `trace_id`/`span_id` fields, so every log
/// line inside it can be found from the trace (and the trace from a log line).
pub fn record_ids(span: &Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", sc.trace_id().to_string());
        span.record("span_id", sc.span_id().to_string());
    }
}

/// The span of one run of a job, continuing the trace the job was queued with.
pub fn job_span(queue: &str, job_id: &str, attempt: usize, parent: &TraceContext) -> Span {
    let span = tracing::info_span!(
        "job",
        otel.name = format!("{queue} process"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        "messaging.system" = "apalis",
        "messaging.operation.type" = "process",
        "messaging.destination.name" = queue,
        "messaging.message.id" = job_id,
        "job.attempt" = attempt,
        "job.outcome" = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        orderId = tracing::field::Empty,
    );
    parent.adopt(&span);
    record_ids(&span);
    // The attempt's trace, for its history row if it fails: the span's own when OpenTelemetry
    // records it, else the trace the job was queued with (carried through unchanged).
    let trace_id = trace_id_of(&span).or_else(|| parent.trace_id().map(str::to_owned));
    super::attempts::note_trace_id(trace_id.as_deref());
    span
}

/// The trace id of `span`, if OpenTelemetry is recording it.
pub fn trace_id_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// How a job run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Failed; another attempt is scheduled.
    Retry,
    /// Failed for good: attempts exhausted or a poison message.
    Dead,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
        }
    }
}

/// Ends a job run: the outcome on its span, and the per-queue metrics.
pub fn finish_job(span: &Span, queue: &'static str, started: Instant, outcome: Outcome) {
    record_outcome(span, outcome);
    count_job(queue, started, outcome);
}

/// The outcome of a job run on one of its spans.
pub fn record_outcome(span: &Span, outcome: Outcome) {
    span.record("job.outcome", outcome.as_str());
    if outcome != Outcome::Done {
        span.record("otel.status_code", "ERROR");
    }
}

/// The per-queue metrics of one job run.
pub fn count_job(queue: &'static str, started: Instant, outcome: Outcome) {
    metrics::counter!("jobs_total", "queue" => queue, "outcome" => outcome.as_str()).increment(1);
    metrics::histogram!("job_duration_seconds", "queue" => queue)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_is_the_second_field() {
        let tc = TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
        };
        assert_eq!(tc.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(TraceContext::default().trace_id(), None);
    }

    #[test]
    fn without_a_layer_the_fallback_is_carried() {
        let fallback = TraceContext {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: Some("k=v".into()),
        };
        assert_eq!(TraceContext::current_or(&fallback), fallback);
    }
}
