//! The Leech's conversation, kept in the browser (localStorage) across reloads.
//!
//! Storage is bounded: the oldest turns are dropped once the saved JSON would pass
//! [`MAX_SAVED_BYTES`], and a damaged or foreign value loads as an empty conversation rather
//! than breaking the page.

use serde::{Deserialize, Serialize};

/// The localStorage key, versioned so a future format does not misread this one.
pub const STORAGE_KEY: &str = "shard.chat.v1";
/// localStorage offers about 5 MB per origin; the chat keeps well under it.
pub const MAX_SAVED_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Set when the answer was stopped or failed before it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
}

impl Conversation {
    /// Reads a saved conversation; anything unreadable gives an empty one.
    pub fn load(saved: Option<&str>) -> Self {
        saved.and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
    }

    /// The JSON to save, without the oldest turns if it would be too large.
    pub fn save(&self) -> String {
        let mut start = 0;
        loop {
            let json = serde_json::to_string(&Conversation { messages: self.messages[start..].to_vec() })
                .expect("a conversation serializes");
            if json.len() <= MAX_SAVED_BYTES || start == self.messages.len() {
                return json;
            }
            start += 1;
        }
    }

    /// The messages to send for the next answer: the latest turns that fit `max_chars`, as
    /// OpenAI chat messages (the model's context is small; the Oracle rejects longer prompts).
    pub fn request_messages(&self, max_chars: usize) -> Vec<serde_json::Value> {
        let mut total = 0;
        let mut picked: Vec<&Message> = vec![];
        for m in self.messages.iter().rev().filter(|m| !m.content.is_empty()) {
            total += m.content.len();
            if total > max_chars && !picked.is_empty() {
                break;
            }
            picked.push(m);
        }
        picked
            .into_iter()
            .rev()
            .map(|m| {
                let role = match m.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                serde_json::json!({"role": role, "content": m.content})
            })
            .collect()
    }

    /// Removes the last answer so it can be asked for again; true if there was one.
    pub fn drop_last_answer(&mut self) -> bool {
        if self.messages.last().is_some_and(|m| m.role == Role::Assistant) {
            self.messages.pop();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role, content: &str) -> Message {
        Message { role, content: content.into(), note: None }
    }

    #[test]
    fn round_trips_and_survives_garbage() {
        let c = Conversation { messages: vec![msg(Role::User, "hi"), msg(Role::Assistant, "hello")] };
        assert_eq!(Conversation::load(Some(&c.save())), c);
        assert_eq!(Conversation::load(Some("{not json")), Conversation::default());
        assert_eq!(Conversation::load(Some("[1,2]")), Conversation::default());
        assert_eq!(Conversation::load(None), Conversation::default());
    }

    #[test]
    fn saving_drops_the_oldest_turns_beyond_the_bound() {
        let big = "x".repeat(MAX_SAVED_BYTES / 3);
        let c = Conversation { messages: (0..6).map(|_| msg(Role::User, &big)).collect() };
        let saved = c.save();
        assert!(saved.len() <= MAX_SAVED_BYTES);
        assert_eq!(Conversation::load(Some(&saved)).messages.len(), 2);
    }

    #[test]
    fn requests_keep_the_latest_turns_that_fit() {
        let mut c = Conversation { messages: vec![msg(Role::User, "aaaa"), msg(Role::Assistant, "bbbb"), msg(Role::User, "cc")] };
        let m = c.request_messages(7);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0]["role"], "assistant");
        assert_eq!(m[1]["content"], "cc");
        // The newest message goes even when alone it is over the limit.
        assert_eq!(c.request_messages(1).len(), 1);
        assert!(!c.drop_last_answer());
        c.messages.push(msg(Role::Assistant, "dd"));
        assert!(c.drop_last_answer());
        assert_eq!(c.messages.len(), 3);
    }
}
