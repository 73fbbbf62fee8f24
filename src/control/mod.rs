//! How controller drives a running proc_image: `map` is the pinned control
//! maps both sides share (proc_image creates them, controller opens them),
//! `client` is controller's side of the conversation.

pub mod client;
pub mod map;

pub use map::*;
