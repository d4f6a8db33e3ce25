//! A backfill's progress as the library reports it: a bar on a terminal, a
//! log line every 5 s otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use firn::backfill::Progress;

/// Draws the progress a backfill reports.
pub(crate) struct ProgressDisplay {
    bar: Option<indicatif::ProgressBar>,
    /// When the first report came, and when the last log line was written.
    times: Mutex<Option<(Instant, Instant)>>,
}

impl ProgressDisplay {
    /// A bar if stderr is a terminal, else log lines.
    pub(crate) fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Self {
            bar,
            times: Mutex::new(None),
        }
    }

    /// Show `p`.
    pub(crate) fn update(&self, p: Progress) {
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        let (started, last_log) = times.get_or_insert_with(|| (Instant::now(), Instant::now()));
        let rate = p.events as f64 / started.elapsed().as_secs_f64().max(0.001);
        if let Some(b) = &self.bar {
            if b.length() != Some(p.total_bytes) {
                b.set_length(p.total_bytes);
            }
            b.set_position(p.bytes.min(p.total_bytes));
            b.set_message(format!("{} events ({rate:.0}/s)", p.events));
        } else if last_log.elapsed() >= Duration::from_secs(5) {
            *last_log = Instant::now();
            tracing::info!(
                events = p.events,
                events_per_second = rate as u64,
                bytes_read = p.bytes,
                of_bytes = p.total_bytes,
                "backfilling"
            );
        }
    }

    /// Clear the bar.
    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
