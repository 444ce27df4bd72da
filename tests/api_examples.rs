//! Replays docs/api-examples.md against a freshly started service so the walk-through never
//! goes stale: every `sh` block runs, in order, in one bash session (real curl and jq), and
//! its output is compared with the `http` block that follows it — status, the listed
//! headers, and the JSON bodies, where the string "…" matches any value.

mod common;

use std::process::Command;

use common::{TestApp, ADMIN_EMAIL, ADMIN_PASSWORD};
use serde_json::Value;

const WILDCARD: &str = "…";

struct Example {
    /// 1-based line of the `sh` block, for failure messages.
    line: usize,
    script: String,
    expected: Option<String>,
}

/// The fenced blocks of the page as (info string, first line, body).
fn fenced_blocks(markdown: &str) -> Vec<(String, usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_string(), i + 1, String::new())),
            (Some(_), Some("")) => blocks.push(open.take().unwrap()),
            (Some((_, _, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "unterminated code block");
    blocks
}

fn examples(markdown: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    for (info, line, body) in fenced_blocks(markdown) {
        match info.as_str() {
            "sh" => out.push(Example {
                line,
                script: body,
                expected: None,
            }),
            "http" => {
                let last = out.last_mut().expect("an http block follows an sh block");
                assert!(last.expected.is_none(), "two http blocks after line {line}");
                last.expected = Some(body);
            }
            other => panic!("unexpected code block `{other}` at line {line}"),
        }
    }
    out
}

#[derive(Debug)]
enum Output {
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: Option<Value>,
    },
    Json(Value),
}

/// Parses what curl/jq print: HTTP responses from `curl -i` (status line, headers, a blank
/// line, a JSON body) and bare JSON values, in any sequence.
fn parse_outputs(text: &str) -> Vec<Output> {
    let text = text.replace("\r\n", "\n");
    let mut rest = text.trim_start();
    let mut outputs = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("HTTP/") {
            let (status_line, after) = after.split_once('\n').unwrap_or((after, ""));
            let status = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            // Header lines run up to the first empty line (right away when none are listed).
            let (head, after) = match after.strip_prefix('\n') {
                Some(body) => ("", body),
                None => after.split_once("\n\n").unwrap_or((after, "")),
            };
            let headers = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            rest = after.trim_start();
            let body = if rest.is_empty() || rest.starts_with("HTTP/") {
                None
            } else {
                let (value, used) = one_json(rest);
                rest = rest[used..].trim_start();
                Some(value)
            };
            outputs.push(Output::Http {
                status,
                headers,
                body,
            });
        } else {
            let (value, used) = one_json(rest);
            rest = rest[used..].trim_start();
            outputs.push(Output::Json(value));
        }
    }
    outputs
}

fn one_json(text: &str) -> (Value, usize) {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let value = stream
        .next()
        .unwrap_or_else(|| panic!("no JSON in {text:?}"))
        .unwrap_or_else(|e| panic!("bad JSON ({e}) in {text:?}"));
    (value, stream.byte_offset())
}

/// `expected` with "…" matching anything; objects must have exactly the same keys.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == WILDCARD => true,
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| matches(e, a))
        }
        _ => expected == actual,
    }
}

fn check(example: &Example, actual_text: &str) {
    let context = || {
        format!(
            "docs/api-examples.md line {}:\n{}\n--- printed ---\n{actual_text}",
            example.line, example.script
        )
    };
    let expected = parse_outputs(example.expected.as_deref().unwrap_or(""));
    let actual = parse_outputs(actual_text);
    assert_eq!(expected.len(), actual.len(), "{}", context());
    for (e, a) in expected.iter().zip(&actual) {
        match (e, a) {
            (
                Output::Http {
                    status: es,
                    headers: eh,
                    body: eb,
                },
                Output::Http {
                    status: as_,
                    headers: ah,
                    body: ab,
                },
            ) => {
                assert_eq!(es, as_, "status; {}", context());
                for (name, value) in eh {
                    assert!(
                        ah.iter().any(|(n, v)| n == name && v == value),
                        "header {name}: {value} missing; {}",
                        context()
                    );
                }
                match (eb, ab) {
                    (Some(e), Some(a)) => assert!(matches(e, a), "body; {}", context()),
                    (None, None) => {}
                    _ => panic!("body presence differs; {}", context()),
                }
            }
            (Output::Json(e), Output::Json(a)) => {
                assert!(matches(e, a), "{}", context())
            }
            _ => panic!("output kinds differ; {}", context()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_walk_through_replays_against_the_service() {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api-examples.md"),
    )
    .unwrap();
    let examples = examples(&page);
    assert!(examples.len() >= 20, "{} examples", examples.len());

    let mut script = String::from("set -euo pipefail\n");
    for (i, example) in examples.iter().enumerate() {
        script.push_str(&format!("printf '\\n@@@ {i}\\n'\n{}\n", example.script));
    }
    script.push_str(&format!("printf '\\n@@@ {}\\n'\n", examples.len()));

    let app = TestApp::spawn().await;
    let output = tokio::task::spawn_blocking({
        let base = app.base.clone();
        move || {
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .env("BASE", base)
                .env("ADMIN_EMAIL", ADMIN_EMAIL)
                .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
                .output()
                .expect("bash runs (curl and jq must be installed)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the walk-through failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut sections = stdout.split("\n@@@ ").skip(1);
    for example in &examples {
        let section = sections.next().expect("every block printed its marker");
        let printed = section.split_once('\n').map_or("", |(_, rest)| rest);
        check(example, printed);
    }
    app.stop().await;
}

#[test]
fn the_output_matcher_is_strict_where_it_should_be() {
    let e: Value = serde_json::json!({"id": "…", "status": "CREATED"});
    assert!(matches(
        &e,
        &serde_json::json!({"id": 7, "status": "CREATED"})
    ));
    assert!(!matches(
        &e,
        &serde_json::json!({"id": 7, "status": "CANCELLED"})
    ));
    assert!(!matches(
        &e,
        &serde_json::json!({"id": 7, "status": "CREATED", "x": 1})
    ));
    let parsed = parse_outputs("HTTP/1.1 201 Created\r\nA: b\r\n\r\n{\"x\":1}{\"y\":2}\n");
    assert!(matches!(
        &parsed[0],
        Output::Http {
            status: 201,
            body: Some(_),
            ..
        }
    ));
    assert!(matches!(&parsed[1], Output::Json(_)));
}
