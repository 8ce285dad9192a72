//! The Shard web app. The Leptos views arrive with the web-app issue; until then this crate
//! only fixes the workspace shape and proves that the shared core links into it.

pub use shard_scout::inspect_draft_model;
