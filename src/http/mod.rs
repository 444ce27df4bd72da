//! Cross-cutting HTTP concerns: the server and its connection limits, request ids, the
//! standard error body, request metrics, and the JSON extractor whose rejections speak the
//! standard error body.

pub mod error_body;
pub mod extract;
pub mod integer;
pub mod metrics;
pub mod openapi;
pub mod paging;
pub mod request_id;
pub mod server;
