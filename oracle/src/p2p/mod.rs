//! The Oracle as a libp2p node, and the Scouts it drafts with.
//!
//! * [`admission`]: connection limits per address and a timed ban list.
//! * [`node`]: transports (webrtc-direct, WebSocket, TCP), behaviours and the event loop.
//! * [`scheduler`]: draft jobs for Scouts, behind the speculative decoder's draft-source trait.

pub mod admission;
pub mod node;
pub mod scheduler;
