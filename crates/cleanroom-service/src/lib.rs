//! The clean room's use cases as a plain Rust API.
//!
//! Every public method takes the authenticated [`Principal`], decides on the server side
//! whether it may act (deny unless authorised), acts, and records the action in an audit chain,
//! refusals included. The HTTP server is a thin adapter over this crate, and most behaviour is
//! tested here.

pub mod activation;
pub mod analysis;
mod error;
pub mod results;
mod room;
pub mod token;

pub use activation::{ActivationRequest, ActivationView, Segment};
pub use analysis::{
    AnalysisView, ApprovalView, BudgetView, ChargeView, GrantRequest, PlanView, PolicyView,
    QueryRequest, TemplateRequest,
};
pub use cleanroom_query::Cell;
/// How much memory all analyses of this process may hold together; set once, at start.
pub use cleanroom_query::limit_memory as limit_analysis_memory;
pub use cleanroom_query::spill::{spill_files, spilled_bytes};
pub use cleanroom_query::templates::{ParamInfo, TemplateInfo};
pub use cleanroom_query::use_cluster as use_analysis_cluster;
pub use cleanroom_query::{MemoryLimits, SpillConfig};
pub use error::ServiceError;
pub use results::{AnalysisResult, ResultColumn, ResultTable};
pub use room::{
    CleanRoom, CollaborationView, Config, LOCK_FILE, Limits, MasterKeyHex, MetadataUrl, Migrated,
    ParquetSlot, Principal, Readiness, Rotated, UploadInput, migrate_metadata,
};
pub use token::IssuedToken;
