//! An incremental parser for server-sent events, as the Oracle streams completions.
//!
//! Bytes arrive in arbitrary chunks (a UTF-8 character or a line may be split between two), so
//! the parser buffers until a line is complete. Each `data:` line is one event here, since the
//! Oracle writes one JSON object per event; comment lines (`: queue {...}`) carry Shard's queue
//! updates, which OpenAI's clients skip.

/// One line of meaning from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// The payload of a `data:` field.
    Data(String),
    /// A comment line's text, without the leading colon.
    Comment(String),
}

/// Longest line kept while waiting for its end; a longer one is a broken stream, not a reply.
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTooLong;

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns the items completed by it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseItem>, LineTooLong> {
        self.pending.extend_from_slice(chunk);
        let mut items = vec![];
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|&b| b == b'\n').map(|i| start + i) {
            let mut line = &self.pending[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if let Some(item) = parse_line(line) {
                items.push(item);
            }
            start = end + 1;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LINE_BYTES {
            return Err(LineTooLong);
        }
        Ok(items)
    }
}

fn parse_line(line: &[u8]) -> Option<SseItem> {
    let text = String::from_utf8_lossy(line);
    if let Some(comment) = text.strip_prefix(':') {
        return Some(SseItem::Comment(comment.strip_prefix(' ').unwrap_or(comment).to_string()));
    }
    let (field, value) = text.split_once(':').unwrap_or((&text, ""));
    (field == "data").then(|| SseItem::Data(value.strip_prefix(' ').unwrap_or(value).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream = ": queue {\"ahead\":2}\r\n\r\ndata: {\"x\":\"é\"}\n\nevent: ignored\ndata: [DONE]\n\n".as_bytes();
        for cut in 0..stream.len() {
            let mut p = SseParser::new();
            let mut items = p.push(&stream[..cut]).unwrap();
            items.extend(p.push(&stream[cut..]).unwrap());
            assert_eq!(
                items,
                vec![
                    SseItem::Comment("queue {\"ahead\":2}".into()),
                    SseItem::Data("{\"x\":\"é\"}".into()),
                    SseItem::Data("[DONE]".into())
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut p = SseParser::new();
        assert_eq!(p.push(&vec![b'a'; MAX_LINE_BYTES + 1]), Err(LineTooLong));
    }
}
