//! The reporter: everything a PR/MR is told about its stand, from what a run's rows say to the
//! forge's API.
//!
//! A [`ReportView`](crate::reporter::ReportView) is built from the store's rows of a stand and its
//! newest run; [`render`](crate::reporter::render()) turns it into the sticky comment's Markdown (its
//! first line the marker by which the comment is found again);
//! [`outbound`](crate::reporter::outbound) chooses the rows it makes (comment, check, environment,
//! label); they are queued in the outbox in the transaction that records what they report
//! ([`StandReport`](crate::reporter::StandReport), [`enqueue`](crate::reporter::enqueue)); and the
//! [`Reporter`](crate::reporter::Reporter) delivers them to the forges, apart from everything else,
//! through a [`ForgeClient`](crate::forge::client::ForgeClient). The pipeline's report step and the
//! reaper's expiry warning decide when; this module decides what is said.
//!
//! It sits below the pipeline and above the forge clients: it imports neither the pipeline nor
//! anything that does.

/// The outbox loop: claim, deliver with retries and backoff, record.
mod deliver;
/// The rows a report view makes and what a teardown says first; a stand's report queued in one
/// transaction.
mod publish;
/// Outbox payloads by kind, and enqueueing them.
mod queue;
/// The sticky comment's Markdown. Pure.
mod render;
/// What a report shows, built from the store's rows.
mod view;

pub use deliver::{PassStats, Reporter, ReporterSettings};
pub use publish::{
    Queued, ReportError, StandReport, TESTED_LABEL, Target, deactivation, environment_name, outbound,
    queue_deactivation, queue_unrun,
};
pub use queue::{
    CheckPayload, CommentPayload, EnvironmentPayload, LabelPayload, Outbound, ReplyPayload, enqueue, enqueue_comment,
};
pub use render::{MAX_BODY_CHARS, cost_text, render, trigger_text};
pub use view::{AccessLine, CostLine, Degraded, ReportView, Status, StepLine};
