//! Issue 23's fleet figure (run by scripts/bench-fleet.sh): what a day of a 100-stand fleet costs
//! awake around the clock against the same fleet with sleep after `[sleep] idle_after`, on one
//! simulated activity trace, in the same run.
//!
//! The trace (seeded, so every run sees the same one unless `--seed` says otherwise): each stand's
//! developer works 09:00–18:00 UTC on both simulated days; during it they push (each push is a
//! deploy: activity) and people open the stand (review sessions of 5–20 minutes, a request a
//! minute); one stand in ten is also looked at in the evening. The second day is the one priced, so
//! no stand starts the day in a state the first day would not leave it in.
//!
//! What draftd decides is draftd's own: the sweep's times come from `[reaper] schedule`'s default
//! (every 10 minutes), the idle time from `[sleep] idle_after`'s (30 minutes), traffic counts as
//! activity at the first sweep after it (Prometheus over `[sleep] traffic_window`), a request to a
//! sleeping stand wakes it, and the awake stretches are priced by `stand::cost` at `[cost]`'s
//! default prices. The stand's requests are a typical service's, not draft.yaml's tiny defaults:
//! an app at 500m CPU and 1 GiB, three mocks at 10m and 160 MiB each, a 1 GiB claim.
//!
//! `--idle-after 15m,30m,1h,2h` prices more idle times beside the default.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use draftd::config::{CostConfig, ReaperConfig, SleepConfig};
use draftd::stand::{Awake, cost};

const STANDS: usize = 100;
const CPU_MILLIS: i64 = 500 + 3 * 10;
const MEMORY_BYTES: i64 = (1024 + 3 * 160) << 20;
const STORAGE_BYTES: i64 = 1 << 30;
const MINUTE: i64 = 60;

/// One stand's day: when it was deployed, and the minutes someone sent it requests.
struct Trace {
    pushes: Vec<i64>,
    requests: Vec<i64>,
}

fn at(start: DateTime<Utc>, second: i64) -> DateTime<Utc> {
    start + chrono::Duration::seconds(second)
}

/// Two days of activity for each stand, in seconds from the start.
fn traces(seed: u64) -> Vec<Trace> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..STANDS)
        .map(|i| {
            let mut pushes = Vec::new();
            let mut requests = Vec::new();
            for day in 0..2 {
                let work = day * 86_400 + 9 * 3600;
                for _ in 0..rng.usize(1..=5) {
                    pushes.push(work + rng.i64(0..9 * 3600));
                }
                let mut sessions: Vec<i64> = (0..rng.usize(1..=4)).map(|_| work + rng.i64(0..9 * 3600)).collect();
                if i % 10 == 0 {
                    sessions.push(day * 86_400 + 20 * 3600 + rng.i64(0..2 * 3600));
                }
                for session in sessions {
                    for minute in 0..rng.i64(5..=20) {
                        requests.push(session + minute * MINUTE);
                    }
                }
            }
            pushes.sort_unstable();
            requests.sort_unstable();
            Trace { pushes, requests }
        })
        .collect()
}

/// What one stand did under `idle_after` (`None`: never sleeps): its awake stretches, and the
/// times of the wakes a request asked for (someone waited for them).
fn simulate(trace: &Trace, sweeps: &[i64], idle_after: Option<i64>, end: i64) -> (Vec<(i64, i64)>, Vec<i64>) {
    let Some(idle_after) = idle_after else { return (vec![(0, end)], Vec::new()) };
    let mut events: Vec<(i64, bool)> =
        trace.pushes.iter().map(|&t| (t, true)).chain(trace.requests.iter().map(|&t| (t, false))).collect();
    events.sort_unstable();
    let (mut awake_since, mut last_activity, mut stretches, mut visit_wakes) = (Some(0), 0, Vec::new(), Vec::new());
    let mut next_event = 0;
    let mut last_sweep = 0;
    for &sweep in sweeps.iter().chain(std::iter::once(&end)) {
        // Runs and requests before this sweep: a push deploys (and wakes), a request to a sleeping
        // stand wakes it; traffic to an awake one is seen by the sweep, through Prometheus.
        let mut seen_traffic = false;
        while next_event < events.len() && events[next_event].0 < sweep {
            let (t, push) = events[next_event];
            next_event += 1;
            if awake_since.is_none() {
                awake_since = Some(t);
                last_activity = t;
                if !push {
                    visit_wakes.push(t);
                }
            } else if push {
                last_activity = t;
            } else if t >= last_sweep {
                seen_traffic = true;
            }
        }
        if sweep == end {
            break;
        }
        if seen_traffic {
            last_activity = sweep;
        }
        if let Some(since) = awake_since
            && sweep - last_activity >= idle_after
        {
            stretches.push((since, sweep));
            awake_since = None;
        }
        last_sweep = sweep;
    }
    if let Some(since) = awake_since {
        stretches.push((since, end));
    }
    (stretches, visit_wakes)
}

struct Day {
    cost: f64,
    awake_hours: f64,
    visit_wakes: usize,
}

/// The fleet's second day under `idle_after`.
fn day(traces: &[Trace], start: DateTime<Utc>, sweeps: &[i64], idle_after: Option<i64>, prices: &CostConfig) -> Day {
    let (from, end) = (86_400, 2 * 86_400);
    let mut total = Day { cost: 0.0, awake_hours: 0.0, visit_wakes: 0 };
    for trace in traces {
        let (stretches, wakes) = simulate(trace, sweeps, idle_after, end);
        let awake: Vec<Awake> = stretches
            .iter()
            .filter(|(_, until)| *until > from)
            .map(|&(since, until)| Awake {
                from: at(start, since.max(from)),
                until: Some(at(start, until)),
                cpu_millis: CPU_MILLIS,
                memory_bytes: MEMORY_BYTES,
            })
            .collect();
        let priced = cost(&prices.rates(), &prices.currency, &awake, STORAGE_BYTES, at(start, from), at(start, end));
        total.cost += priced.total;
        total.awake_hours += priced.awake_hours;
        total.visit_wakes += wakes.iter().filter(|t| **t >= from).count();
    }
    total
}

fn parse_args() -> anyhow::Result<(u64, Vec<Duration>)> {
    let (mut seed, mut extra) = (23, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seed" => seed = args.next().unwrap_or_default().parse()?,
            "--idle-after" => {
                for d in args.next().unwrap_or_default().split(',') {
                    extra.push(humantime::parse_duration(d)?);
                }
            }
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other:?} (--seed N, --idle-after 15m,1h)"),
        }
    }
    Ok((seed, extra))
}

fn main() -> anyhow::Result<()> {
    let (seed, extra) = parse_args()?;
    let (sleep, prices) = (SleepConfig::default(), CostConfig::default());
    let start = Utc.with_ymd_and_hms(2026, 12, 7, 0, 0, 0).single().expect("a valid date");
    let schedule = ReaperConfig::default().cron().map_err(anyhow::Error::msg)?;
    let sweeps: Vec<i64> = schedule
        .after(&(start - chrono::Duration::seconds(1)))
        .map(|t| (t - start).num_seconds())
        .take_while(|s| *s < 2 * 86_400)
        .collect();
    let traces = traces(seed);
    let requests: usize = traces.iter().map(|t| t.requests.len()).sum::<usize>() / 2;
    let pushes: usize = traces.iter().map(|t| t.pushes.len()).sum::<usize>() / 2;
    println!(
        "fleet: {STANDS} stands, one simulated day (seed {seed}): {pushes} pushes, {requests} request-minutes; \
         {} sweeps a day ([reaper] schedule {:?}); each stand {CPU_MILLIS}m CPU, {} MiB, {} GiB claimed",
        sweeps.len() / 2,
        ReaperConfig::default().schedule,
        MEMORY_BYTES >> 20,
        STORAGE_BYTES >> 30
    );
    let awake = day(&traces, start, &sweeps, None, &prices);
    println!(
        "awake all day:           {:>8.2} {}  ({:.0} stand-hours awake)",
        awake.cost, prices.currency, awake.awake_hours
    );
    let mut idle_times = vec![sleep.idle_after];
    idle_times.extend(extra.into_iter().filter(|d| *d != sleep.idle_after));
    for idle in idle_times {
        let slept = day(&traces, start, &sweeps, Some(idle.as_secs() as i64), &prices);
        println!(
            "sleep after {:<12} {:>8.2} {}  ({:.0} stand-hours awake, {} wakes on a request; {:.2} of the awake cost){}",
            humantime::format_duration(idle).to_string() + ":",
            slept.cost,
            prices.currency,
            slept.awake_hours,
            slept.visit_wakes,
            slept.cost / awake.cost,
            if idle == sleep.idle_after { "  <- [sleep] idle_after's default" } else { "" }
        );
    }
    Ok(())
}
