//! The figures the front page draws, read from the store and shaped into [`Chart`]s: stands by
//! state over 14 days (as the sweeps counted them), time to URL and wake time per day, cost per
//! project per week.

use chrono::{DateTime, Days, NaiveDate, Utc};

use super::chart::{Chart, Series, lines, stacked_bars};
use crate::http::AppState;
use crate::stand::StandState;
use crate::store::StoreError;
use crate::store::history::{self, DayPercentiles};
use crate::store::usage;

const DAYS: u64 = 14;
const WEEKS: i64 = 4;

/// The charts, in the order the page shows them.
pub(super) async fn front_page(state: &AppState, now: DateTime<Utc>) -> Result<Vec<Chart>, StoreError> {
    let pool = state.pool();
    let days: Vec<NaiveDate> =
        (0..DAYS).rev().filter_map(|d| now.date_naive().checked_sub_days(Days::new(d))).collect();
    let from = days[0].and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    let labels: Vec<String> = days.iter().map(|d| d.format("%m-%d").to_string()).collect();

    let counts = history::states_by_day(pool, from).await?;
    let states: Vec<Series> = [StandState::Active, StandState::Sleeping, StandState::Waiting, StandState::Closing]
        .iter()
        .map(|s| Series {
            name: s.as_str().to_owned(),
            values: days
                .iter()
                .map(|d| counts.iter().find(|c| c.day == *d && c.state == s.as_str()).map(|c| c.stands as f64))
                .collect(),
        })
        .collect();
    let percentiles = |rows: &[DayPercentiles]| -> Vec<Series> {
        let pick = |name: &str, f: fn(&DayPercentiles) -> f64| Series {
            name: name.to_owned(),
            values: days.iter().map(|d| rows.iter().find(|r| r.day == *d).map(f)).collect(),
        };
        vec![pick("p50", |r| r.p50), pick("p95", |r| r.p95)]
    };
    let to_url = percentiles(&history::time_to_url_by_day(pool, from).await?);
    let wakes = percentiles(&history::wake_time_by_day(pool, from).await?);

    // Four rolling weeks, the newest ending now.
    let mut weeks = Vec::new();
    for w in (0..WEEKS).rev() {
        let to = now - chrono::Duration::days(7 * w);
        let from = to - chrono::Duration::days(7);
        weeks.push((from, usage::in_window(pool, None, from, to).await?));
    }
    let mut projects: Vec<&str> = weeks.iter().flat_map(|(_, rows)| rows.iter().map(|r| r.project.as_str())).collect();
    projects.sort_unstable();
    projects.dedup();
    let rates = state.prices().rates();
    let cost: Vec<Series> = projects
        .iter()
        .map(|p| Series {
            name: (*p).to_owned(),
            values: weeks
                .iter()
                .map(|(_, rows)| rows.iter().find(|r| r.project == *p).map(|r| r.priced(&rates).0))
                .collect(),
        })
        .collect();
    let week_labels: Vec<String> = weeks.iter().map(|(from, _)| format!("from {}", from.format("%m-%d"))).collect();
    let currency = format!(" {}", state.prices().currency);

    Ok(vec![
        stacked_bars("states", "Stands by state, last 14 days (each day's last sweep)", &labels, &states, ""),
        lines("time-to-url", "Time to URL per day (queued to verify passed), p50 and p95", &labels, &to_url, " s"),
        lines("wake-time", "Wake time per day (queued to verify passed), p50 and p95", &labels, &wakes, " s"),
        stacked_bars("cost", "Cost per project per week (estimate from requests)", &week_labels, &cost, &currency),
    ])
}
