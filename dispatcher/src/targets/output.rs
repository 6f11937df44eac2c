//! Reading what a handler process writes to stdout/stderr for the log, whatever it writes.
//!
//! Guarantees: the stream is drained until the process closes it, so a child never dies of
//! EPIPE because sluice stopped reading; bytes that are not UTF-8 are replaced with U+FFFD
//! instead of ending the read; a line longer than [`MAX_LOGGED_LINE_BYTES`] (8 KiB) is cut, its
//! rest dropped as it arrives (memory stays bounded whatever the line's length) and marked as cut.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The longest line of handler output sluice logs (and keeps); the rest of a line is dropped.
pub const MAX_LOGGED_LINE_BYTES: usize = 8 * 1024;

/// Calls `on_line` with every line of `output` (without its newline; cut lines end with a note
/// of their full length) until the stream ends or fails.
pub async fn for_each_line(
    output: impl AsyncRead + Unpin,
    max_line: usize,
    mut on_line: impl FnMut(String),
) {
    let mut reader = BufReader::with_capacity(16 * 1024, output);
    let mut line: Vec<u8> = Vec::new();
    let mut dropped = 0usize;
    let mut emit = |line: &mut Vec<u8>, dropped: &mut usize| {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if *dropped > 0 {
            text.push_str(&format!(
                "… [line cut by sluice: {} bytes in all]",
                line.len() + *dropped
            ));
        }
        line.clear();
        *dropped = 0;
        on_line(text);
    };
    loop {
        let available = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(available) => available,
        };
        let (chunk, newline) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], true),
            None => (available, false),
        };
        let room = max_line.saturating_sub(line.len());
        let kept = chunk.len().min(room);
        line.extend_from_slice(&chunk[..kept]);
        dropped += chunk.len() - kept;
        let consumed = chunk.len() + usize::from(newline);
        reader.consume(consumed);
        if newline {
            if line.last() == Some(&b'\r') && dropped == 0 {
                line.pop();
            }
            emit(&mut line, &mut dropped);
        }
    }
    if !line.is_empty() || dropped > 0 {
        emit(&mut line, &mut dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut out = Vec::new();
        for_each_line(input, max, |line| out.push(line)).await;
        out
    }

    #[tokio::test]
    async fn bad_utf8_does_not_end_the_read() {
        assert_eq!(
            lines(b"ok\n\xff\xfebad\nafter\n", 100).await,
            ["ok", "\u{fffd}\u{fffd}bad", "after"]
        );
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_marked_and_the_rest_still_read() {
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\nnext\nlast without newline");
        let out = lines(&input, 10).await;
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0],
            "xxxxxxxxxx… [line cut by sluice: 100000 bytes in all]"
        );
        assert_eq!(out[1], "next");
        assert_eq!(out[2], "last witho… [line cut by sluice: 20 bytes in all]");
    }

    #[tokio::test]
    async fn crlf_endings_are_trimmed() {
        assert_eq!(lines(b"a\r\nb\n", 100).await, ["a", "b"]);
    }
}
