//! The clean room's use cases as a plain Rust API.
//!
//! Every public method takes the authenticated [`Principal`], decides on the server side
//! whether it may act (deny unless authorised), acts, and records the action in an audit chain,
//! refusals included. The HTTP server is a thin adapter over this crate, and most behaviour is
//! tested here.

mod error;
mod room;
pub mod token;

pub use error::ServiceError;
pub use room::{
    CleanRoom, CollaborationView, Config, LOCK_FILE, Limits, MasterKeyHex, ParquetSlot, Principal,
    UploadInput,
};
pub use token::IssuedToken;
