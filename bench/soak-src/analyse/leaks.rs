//! apilb's resources over the run, for the leak verdicts: RSS by thirds of the run (median
//! of the middle and the last third, with the allowed growth), its slope, and the maxima.

use super::median;
use crate::resources::Sample;
use crate::{RSS_MARGIN_FRACTION, RSS_MARGIN_KIB};

/// RSS and descriptors over the run.
pub(crate) struct Resources {
    pub(crate) mid_rss: i64,
    pub(crate) last_rss: i64,
    pub(crate) rss_allowed: i64,
    pub(crate) rss_max: i64,
    pub(crate) slope_kib_per_min: f64,
    pub(crate) fds_max: i64,
}

/// RSS by thirds of the run, its slope over the last two, and the maxima.
pub(crate) fn resources(samples: &[Sample], traffic_end: f64) -> Resources {
    let run: Vec<&Sample> = samples.iter().filter(|s| s.t <= traffic_end).collect();
    let third = traffic_end / 3.0;
    let mid: Vec<i64> = run
        .iter()
        .filter(|s| s.t > third && s.t <= 2.0 * third)
        .map(|s| s.rss_kib)
        .collect();
    let last: Vec<i64> = run
        .iter()
        .filter(|s| s.t > 2.0 * third)
        .map(|s| s.rss_kib)
        .collect();
    let (mid_rss, last_rss) = (median(mid), median(last));
    let rss_allowed = mid_rss + RSS_MARGIN_KIB + (mid_rss as f64 * RSS_MARGIN_FRACTION) as i64;
    let rss_max = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    // Least-squares slope of RSS over the last two thirds (reported, not judged).
    let tail: Vec<(f64, f64)> = run
        .iter()
        .filter(|s| s.t > third)
        .map(|s| (s.t, s.rss_kib as f64))
        .collect();
    let slope_kib_per_min = {
        let n = tail.len() as f64;
        let (mx, my) = (
            tail.iter().map(|p| p.0).sum::<f64>() / n,
            tail.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let num: f64 = tail.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let den: f64 = tail.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if n >= 3.0 && den > 0.0 {
            num / den * 60.0
        } else {
            0.0
        }
    };
    let fds_max = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    Resources {
        mid_rss,
        last_rss,
        rss_allowed,
        rss_max,
        slope_kib_per_min,
        fds_max,
    }
}
