//! Trace links: wherever an attempt or an order is shown, its trace id and, when
//! `TRACE_UI_URL` is set, the address of that trace in the tracing UI.

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::TraceUiUrl;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TraceLink {
    /// W3C trace id (32 hex digits).
    pub trace_id: Option<String>,
    /// The trace in the tracing UI (`TRACE_UI_URL`); absent when none is configured.
    pub trace_url: Option<String>,
}

impl TraceLink {
    pub fn new(ui: Option<&TraceUiUrl>, trace_id: Option<String>) -> Self {
        let trace_url = ui.zip(trace_id.as_deref()).map(|(ui, id)| ui.link(id));
        Self {
            trace_id,
            trace_url,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_needs_both_a_trace_id_and_a_configured_ui() {
        let ui: TraceUiUrl = "http://jaeger:16686/trace/{traceId}".parse().unwrap();
        let id = "4bf92f3577b34da6a3ce929d0e0e4736".to_string();
        let link = TraceLink::new(Some(&ui), Some(id.clone()));
        assert_eq!(
            link.trace_url.as_deref(),
            Some("http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(TraceLink::new(None, Some(id)).trace_url, None);
        assert_eq!(TraceLink::new(Some(&ui), None), TraceLink::default());
    }
}
