//! A streamed chat completion, read on its own thread.
//!
//! The reply thread must not hang on a socket: a server that stops mid-reply would hold the
//! child in silence for as long as the read blocks. So one short-lived thread per request
//! sends it, parses the server-sent events (`data: {chunk}` … `data: [DONE]`) and passes
//! [`Piece`]s over a channel; the reply thread waits on the channel with its own deadlines
//! and simply walks away when one passes. The reader holds the request's [`Permit`] until
//! its connection is closed, and exits at its next read or send once nobody listens.

use std::io::{BufRead, BufReader, Read};

use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;

use super::breaker::Permit;
use crate::reply::FallbackReason;

/// Longest line of the event stream read; a chunk is one token of JSON, far shorter.
const MAX_LINE_BYTES: usize = 256 * 1024;

/// What the server sent, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Reply text (one token or a few).
    Text(String),
    /// The model refused (`delta.refusal`): no more text will be spoken.
    Refusal,
    End(Finish),
    /// Nothing more will come.
    Failed(Failure),
}

/// Why the server ended the reply (`finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its turn (also a stream that said `[DONE]` without a reason).
    Stop,
    /// `max_tokens` ran out: the last sentence is unfinished.
    Length,
    /// The server's content filter stopped the reply.
    ContentFilter,
}

/// A request that did not get a whole reply. `detail` names the error, never content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: FallbackReason,
    pub detail: String,
}

impl Failure {
    pub fn new(reason: FallbackReason, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

/// Everything the reader thread needs for one request.
pub struct Request {
    pub agent: ureq::Agent,
    pub url: String,
    /// `Authorization: Bearer …`, if a key is configured.
    pub bearer: Option<String>,
    pub body: String,
    pub permit: Permit,
}

/// Send `request` on a new thread; its pieces arrive on the returned channel.
pub fn open(request: Request) -> Receiver<Piece> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let spawned = std::thread::Builder::new()
        .name("llm-stream".into())
        .spawn(move || {
            let _permit = &request.permit;
            if let Err(f) = read(&request, &tx) {
                let _ = tx.send(Piece::Failed(f));
            }
        });
    if let Err(e) = spawned {
        // The receiver sees the sender dropped with the closure: a broken stream.
        tracing::warn!(error = %e, "cannot start a thread for an LLM request");
    }
    rx
}

/// Err: the failure to report. Ok: the stream ended, or nobody is listening any more.
fn read(request: &Request, tx: &Sender<Piece>) -> Result<(), Failure> {
    let mut http = request
        .agent
        .post(&request.url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream");
    if let Some(bearer) = &request.bearer {
        http = http.header("authorization", bearer);
    }
    let response = http.send(request.body.as_str()).map_err(send_failure)?;
    let status = response.status().as_u16();
    if status >= 400 {
        return Err(Failure::new(
            FallbackReason::HttpError,
            format!("HTTP {status}"),
        ));
    }
    let mut reader = BufReader::new(response.into_body().into_reader());
    let mut events = Events::default();
    let mut line = Vec::new();
    let mut ended = false;
    loop {
        line.clear();
        let n = read_line(&mut reader, &mut line).map_err(|e| {
            let reason = match e.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    FallbackReason::Timeout
                }
                _ => FallbackReason::BrokenStream,
            };
            Failure::new(reason, e.kind().to_string())
        })?;
        if n == 0 {
            return match ended {
                true => Ok(()),
                false => Err(Failure::new(
                    FallbackReason::BrokenStream,
                    "stream ended without a finish",
                )),
            };
        }
        let text = String::from_utf8_lossy(&line);
        let Some(data) = events.line(&text) else {
            continue;
        };
        for piece in pieces(&data)? {
            ended |= matches!(piece, Piece::End(_));
            if tx.send(piece).is_err() {
                return Ok(()); // the reply is done or gave up: close the connection
            }
        }
        if data.trim() == "[DONE]" {
            return Ok(());
        }
    }
}

/// The reason a request could not be sent or got no response.
fn send_failure(e: ureq::Error) -> Failure {
    let reason = match &e {
        ureq::Error::Timeout(_) => FallbackReason::Timeout,
        ureq::Error::StatusCode(_) => FallbackReason::HttpError,
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => FallbackReason::Timeout,
        ureq::Error::Protocol(_) => FallbackReason::BrokenStream,
        _ => FallbackReason::Unreachable,
    };
    Failure::new(reason, e.to_string())
}

/// One line (without its end) of at most [`MAX_LINE_BYTES`]; 0 at the end of the stream.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    let n = reader
        .by_ref()
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', line)?;
    if n == MAX_LINE_BYTES && !line.ends_with(b"\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "event stream line too long",
        ));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(n)
}

/// Server-sent events: `data:` lines gathered until a blank line ends the event;
/// comments (`:` keep-alives) and other fields are skipped.
#[derive(Debug, Default)]
pub struct Events {
    data: Option<String>,
}

impl Events {
    /// Feed one line; the event's data once a blank line ends it.
    pub fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        None
    }
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// Only `content` is spoken: a reasoning model's `reasoning_content` is not for a child.
#[derive(Debug, Default, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

/// The pieces of one event's data.
pub fn pieces(data: &str) -> Result<Vec<Piece>, Failure> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(vec![Piece::End(Finish::Stop)]);
    }
    let chunk: Chunk = serde_json::from_str(data)
        .map_err(|e| Failure::new(FallbackReason::BrokenStream, format!("bad chunk: {e}")))?;
    if chunk.error.is_some() {
        return Err(Failure::new(
            FallbackReason::BrokenStream,
            "error event in the stream",
        ));
    }
    let mut out = Vec::new();
    for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
        if choice.delta.refusal.is_some_and(|r| !r.is_empty()) {
            out.push(Piece::Refusal);
        }
        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
            out.push(Piece::Text(text));
        }
        if let Some(reason) = choice.finish_reason {
            out.push(Piece::End(match reason.as_str() {
                "length" => Finish::Length,
                "content_filter" => Finish::ContentFilter,
                _ => Finish::Stop,
            }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_gather_data_lines_and_skip_comments() {
        let mut e = Events::default();
        assert_eq!(e.line(": ping"), None);
        assert_eq!(e.line("data: {\"a\":"), None);
        assert_eq!(e.line("data:1}"), None);
        assert_eq!(e.line("id: 7"), None);
        assert_eq!(e.line("").as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(e.line(""), None, "a blank line alone is no event");
    }

    #[test]
    fn chunks_become_pieces() {
        let chunk = |delta: &str, finish: &str| {
            format!(
                r#"{{"choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}],"object":"chat.completion.chunk"}}"#
            )
        };
        let p = |d: &str| pieces(d).unwrap();
        assert_eq!(
            p(&chunk(r#"{"role":"assistant","content":null}"#, "null")),
            vec![]
        );
        assert_eq!(
            p(&chunk(r#"{"content":" sky"}"#, "null")),
            vec![Piece::Text(" sky".into())]
        );
        assert_eq!(
            p(&chunk(r#"{"content":"."}"#, r#""stop""#)),
            vec![Piece::Text(".".into()), Piece::End(Finish::Stop)]
        );
        assert_eq!(
            p(&chunk("{}", r#""length""#)),
            vec![Piece::End(Finish::Length)]
        );
        assert_eq!(
            p(&chunk("{}", r#""content_filter""#)),
            vec![Piece::End(Finish::ContentFilter)]
        );
        assert_eq!(
            p(&chunk(r#"{"refusal":"I can't"}"#, "null")),
            vec![Piece::Refusal]
        );
        assert_eq!(p(&chunk(r#"{"reasoning_content":"hmm"}"#, "null")), vec![]);
        assert_eq!(p(" [DONE]"), vec![Piece::End(Finish::Stop)]);
        let bad = pieces("{not json").unwrap_err();
        assert_eq!(bad.reason, FallbackReason::BrokenStream);
        let err = pieces(r#"{"error":{"message":"overloaded"}}"#).unwrap_err();
        assert_eq!(err.reason, FallbackReason::BrokenStream);
    }

    #[test]
    fn lines_are_bounded() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut r = BufReader::new(&long[..]);
        assert!(read_line(&mut r, &mut Vec::new()).is_err());
        let mut r = BufReader::new(&b"data: 1\r\n\r\n"[..]);
        let mut line = Vec::new();
        assert_eq!(read_line(&mut r, &mut line).unwrap(), 9);
        assert_eq!(line, b"data: 1");
    }
}
