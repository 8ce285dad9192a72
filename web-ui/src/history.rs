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

    /// The messages to send for the next answer, as OpenAI chat messages: the latest whole
    /// turns (each starting with the user's message) that fit `max_chars` and `max_turns`.
    /// The default model's context is small and it was trained on conversations of up to five
    /// turns; the Oracle rejects prompts past its context.
    pub fn request_messages(&self, max_chars: usize, max_turns: usize) -> Vec<serde_json::Value> {
        let sent: Vec<&Message> = self.messages.iter().filter(|m| !m.content.is_empty()).collect();
        // Walk back turn by turn; a turn starts at a user message.
        let (mut start, mut total, mut turns) = (sent.len(), 0, 0);
        let mut i = sent.len();
        while i > 0 {
            i -= 1;
            total += sent[i].content.len();
            if total > max_chars && start < sent.len() {
                break;
            }
            if sent[i].role == Role::User {
                start = i;
                turns += 1;
                if turns == max_turns {
                    break;
                }
            }
        }
        if start == sent.len() {
            start = sent.len().saturating_sub(1); // no user turn at all: the newest message alone
        }
        sent[start..]
            .iter()
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
    fn requests_keep_the_latest_whole_turns_that_fit() {
        let mut c = Conversation { messages: vec![msg(Role::User, "aaaa"), msg(Role::Assistant, "bbbb"), msg(Role::User, "cc")] };
        // "bbbb" + "cc" fit 7 characters, but a turn starts with the user: only "cc" goes.
        let m = c.request_messages(7, 5);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["content"], "cc");
        assert_eq!(c.request_messages(100, 5).len(), 3);
        assert_eq!(c.request_messages(100, 1).len(), 1, "one turn: the last user message");
        // The newest message goes even when alone it is over the limit.
        assert_eq!(c.request_messages(1, 5).len(), 1);
        assert!(!c.drop_last_answer());
        c.messages.push(msg(Role::Assistant, "dd"));
        assert!(c.drop_last_answer());
        assert_eq!(c.messages.len(), 3);
    }

    #[test]
    fn requests_hold_at_most_the_turns_asked_for() {
        let mut messages = vec![];
        for i in 0..8 {
            messages.push(msg(Role::User, &format!("q{i}")));
            messages.push(msg(Role::Assistant, &format!("a{i}")));
        }
        messages.push(msg(Role::User, "last"));
        let c = Conversation { messages };
        let m = c.request_messages(10_000, 5);
        assert_eq!(m.len(), 9, "five user turns and the four answers between them");
        assert_eq!(m[0]["content"], "q4");
        assert_eq!(m[0]["role"], "user");
    }
}
