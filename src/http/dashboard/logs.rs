//! `GET /stands/{id}/logs`: the last lines of each container of the stand's pods, read from the
//! cluster when the page is opened. The dashboard's headers apply (`Cache-Control: no-store`), so
//! no browser or proxy keeps what the app printed; the text is escaped like every value.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use minijinja::context;

use super::session::Session;
use super::view::{self, StandRow};
use super::{Page, not_found, query_param, stand_id};
use crate::cluster::ClusterError;
use crate::cluster::logs::{LogBounds, MAX_PODS, PodLog};
use crate::http::{ApiError, AppState};
use crate::stand::StandState;
use crate::store::stands::{self, StandRef};

/// What the page offers besides the default, as links.
const MORE_LINES: [u32; 2] = [500, LogBounds::MAX_LINES];

/// Why the page shows no logs, or what to keep in mind reading them.
enum Notice {
    /// Dry-run mode, or a process that has no cluster connection: the reason in full.
    NoCluster(String),
    Removed,
    Sleeping,
}

impl Notice {
    fn text(&self) -> String {
        match self {
            Notice::NoCluster(why) => why.clone(),
            Notice::Removed => "The stand was removed: its namespace, and every pod in it, are gone.".to_owned(),
            Notice::Sleeping => "The stand sleeps: its workloads are scaled to zero, so only pods that remain \
                (finished Jobs) have logs. Wake it to see the app's."
                .to_owned(),
        }
    }
}

pub(super) async fn logs(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Page> {
    let id = stand_id(&id)?;
    let bounds = bounds(query.as_deref())?;
    let detail = stands::show(state.pool(), &StandRef::Id(id), 0).await?.ok_or_else(|| not_found(id))?;
    let namespace = &detail.stand.namespace;
    let (pods, notice) = match detail.stand.state {
        StandState::Removed => (Vec::new(), Some(Notice::Removed)),
        StandState::Sleeping => {
            let (pods, notice) = read(&state, namespace, bounds).await?;
            (pods, notice.or(Some(Notice::Sleeping)))
        }
        _ => read(&state, namespace, bounds).await?,
    };
    let context = context! {
        current => "",
        csrf => session.csrf(),
        stand => StandRow::of(&detail.stand, None, Utc::now()),
        namespace,
        pods,
        notice => notice.map(|n| n.text()),
        lines => bounds.lines,
        kib => bounds.bytes / 1024,
        more => MORE_LINES.iter().filter(|n| **n != bounds.lines).collect::<Vec<_>>(),
        max_pods => MAX_PODS,
    };
    Ok(view::render(StatusCode::OK, "logs.html", context))
}

/// `?lines=N`: the last N lines of each container, within [`LogBounds::lines`]' limits.
fn bounds(query: Option<&str>) -> Result<LogBounds, ApiError> {
    let Some(text) = query_param(query, "lines") else { return Ok(LogBounds::DEFAULT) };
    match text.parse::<u32>() {
        Ok(n) if (1..=LogBounds::MAX_LINES).contains(&n) => Ok(LogBounds::lines(n)),
        _ => Err(ApiError::BadRequest {
            field: Some("lines".into()),
            message: format!("lines must be a whole number from 1 to {}, not {text:?}", LogBounds::MAX_LINES),
        }),
    }
}

/// The namespace's pods and their logs; a notice instead when this process cannot read any. A
/// cluster that fails to answer is an error page (502, or 503 while it is worth retrying).
async fn read(state: &AppState, namespace: &str, bounds: LogBounds) -> Result<(Vec<PodLog>, Option<Notice>), ApiError> {
    let none = |why: String| Ok((Vec::new(), Some(Notice::NoCluster(why))));
    let Some(reader) = state.logs() else {
        return none("This draftd process has no connection to the cluster, so it cannot read pod logs.".to_owned());
    };
    match reader.pod_logs(namespace, bounds).await {
        Ok(pods) => Ok((pods, None)),
        Err(e @ ClusterError::DryRun) => none(e.to_string()),
        Err(e) => Err(e.into()),
    }
}
