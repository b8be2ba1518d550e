//! Choices that respect noise: the run-to-run spread of a sweep (measured
//! from its repeats, or a stated default with one repeat), whether the
//! emulated link rather than the tunnel was the limit, the cells tied with
//! the fastest one (within that spread, or all cells the link capped), and
//! the pick among them (least CPU per GB, then lowest p99 RTT under load).
//! The tuner and the report both decide here, so they never disagree.

use super::plan::Overhead;
use super::results::{median, CellRecord, SweepMeta};
use crate::lab::scenario::SystemKind;

/// A cell reaching this share of the link's goodput ceiling was held back
/// by the link: TCP over a rate-limited queue settles at 90-97% of the
/// ceiling; below 90% something else (the tunnel's CPU) was the limit.
pub const LINK_BOUND: f64 = 0.90;

/// The run-to-run spread used to call cells ties.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Noise {
    /// Spread, percent of the median.
    pub percent: f64,
    /// True if measured from repeats; false: the stated default.
    pub measured: bool,
    /// Cells with two or more repeats it was measured over.
    pub cells: usize,
    /// Largest spread of one cell, percent (measured only).
    pub max_percent: Option<f64>,
}

/// The spread of one cell's repeats: (max − min) ÷ median, percent (None
/// with fewer than two measured repeats).
pub fn cell_spread(r: &CellRecord) -> Option<f64> {
    let v: Vec<f64> = r
        .repeats
        .iter()
        .map(|f| f.bits_per_second)
        .filter(|b| *b > 0.0 && b.is_finite())
        .collect();
    if v.len() < 2 {
        return None;
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), x| (l.min(*x), h.max(*x)));
    let m = median(v)?;
    (m > 0.0).then(|| (hi - lo) / m * 100.0)
}

/// The sweep's spread: the median of its cells' spreads (what repeating a
/// cell typically gives; the largest is also kept for the report, but one
/// disturbed repeat must not make every cell a tie), or `default_percent`
/// when no cell has two repeats.
pub fn noise(cells: &[CellRecord], default_percent: f64) -> Noise {
    let spreads: Vec<f64> = cells.iter().filter_map(cell_spread).collect();
    let n = spreads.len();
    let max = spreads.iter().copied().reduce(f64::max);
    match median(spreads) {
        Some(p) => Noise {
            percent: p,
            measured: true,
            cells: n,
            max_percent: max,
        },
        _ => Noise {
            percent: default_percent,
            measured: false,
            cells: 0,
            max_percent: None,
        },
    }
}

/// True if `bps` is within `noise` of `best`.
pub fn tied(best: f64, bps: f64, noise: &Noise) -> bool {
    bps >= best * (1.0 - noise.percent / 100.0)
}

/// The cells tied with the fastest of `eligible` and the pick among them.
#[derive(Debug, Clone)]
pub struct Choice<'a> {
    /// The pick: least CPU per GB among the ties, then lowest p99.
    pub pick: &'a CellRecord,
    /// The fastest eligible cell.
    pub fastest: &'a CellRecord,
    /// Every cell tied with the fastest (the pick included), cheapest first.
    pub ties: Vec<&'a CellRecord>,
    /// Eligible cells considered.
    pub eligible: usize,
}

fn cmp_cost(a: &CellRecord, b: &CellRecord) -> std::cmp::Ordering {
    let key = |r: &CellRecord| {
        (
            r.cpu_s_per_gb.filter(|c| c.is_finite()).unwrap_or(f64::MAX),
            r.p99_loaded_ms
                .filter(|c| c.is_finite())
                .unwrap_or(f64::MAX),
        )
    };
    let (ka, kb) = (key(a), key(b));
    ka.0.total_cmp(&kb.0)
        .then(ka.1.total_cmp(&kb.1))
        .then(b.bits_per_second.total_cmp(&a.bits_per_second))
}

/// Picks among the measured cells of `eligible` (None: none measured).
/// With a link that capped the fastest cells, every cell the link capped
/// (at [`LINK_BOUND`] of its ceiling) is a tie too: their differences are
/// the link's, not the tunnel's.
pub fn choose<'a>(
    eligible: &[&'a CellRecord],
    noise: &Noise,
    link: Option<&LinkVerdict>,
) -> Option<Choice<'a>> {
    let measured: Vec<&CellRecord> = eligible.iter().copied().filter(|r| r.measured()).collect();
    let fastest = *measured
        .iter()
        .max_by(|a, b| a.bits_per_second.total_cmp(&b.bits_per_second))?;
    let floor = link
        .filter(|l| l.limited)
        .map_or(f64::INFINITY, |l| LINK_BOUND * l.ceiling_bps);
    let mut ties: Vec<&CellRecord> = measured
        .iter()
        .copied()
        .filter(|r| {
            tied(fastest.bits_per_second, r.bits_per_second, noise) || r.bits_per_second >= floor
        })
        .collect();
    ties.sort_by(|a, b| cmp_cost(a, b));
    Some(Choice {
        pick: ties.first().copied().unwrap_or(fastest),
        fastest,
        ties,
        eligible: measured.len(),
    })
}

/// Whether the emulated link held the fastest cells back.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkVerdict {
    /// The link's configured rate, bit/s.
    pub rate_bps: f64,
    /// Goodput a tunnelled TCP flow can reach on it, bit/s.
    pub ceiling_bps: f64,
    /// How the ceiling was found.
    pub ceiling_basis: String,
    /// The fastest cell reached [`LINK_BOUND`] of the ceiling.
    pub limited: bool,
    /// Every measured cell is tied with the fastest: any setting carries
    /// the link.
    pub all_tied: bool,
}

/// Judges the link against the fastest cell. None: the link has no rate
/// limit (then only the tunnel or the host can be the limit).
pub fn link_verdict(meta: &SweepMeta, cells: &[CellRecord], noise: &Noise) -> Option<LinkVerdict> {
    let rate = meta.scenario.wan.rate?.0 as f64;
    let o = Overhead::of(meta.scenario.tunneld.mtu);
    let raw = meta
        .baselines
        .iter()
        .find(|b| b.system == SystemKind::Raw)
        .and_then(|b| b.figures.as_ref())
        .map(|f| f.bits_per_second)
        .filter(|b| *b > 0.0);
    let (ceiling, basis) = match raw {
        Some(r) => (
            r * o.tunnel_goodput / o.raw_goodput,
            format!(
                "the raw path's measured {} less the tunnel's overhead",
                tunneld::units::format_rate(r)
            ),
        ),
        None => (
            rate * o.tunnel_goodput,
            format!(
                "{} × {:.1}% (TCP payload per frame through the tunnel)",
                tunneld::units::format_rate(rate),
                o.tunnel_goodput * 100.0
            ),
        ),
    };
    let measured: Vec<&CellRecord> = cells.iter().filter(|c| c.measured()).collect();
    let fastest = measured
        .iter()
        .map(|c| c.bits_per_second)
        .fold(0.0, f64::max);
    let limited = fastest >= LINK_BOUND * ceiling;
    Some(LinkVerdict {
        rate_bps: rate,
        ceiling_bps: ceiling,
        ceiling_basis: basis,
        limited,
        all_tied: !measured.is_empty()
            && measured.iter().all(|c| {
                tied(fastest, c.bits_per_second, noise)
                    || (limited && c.bits_per_second >= LINK_BOUND * ceiling)
            }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::measure::TestFigures;
    use crate::sweep::knobs::{Cell, Knob, Value};

    fn fig(bps: f64) -> TestFigures {
        TestFigures {
            bits_per_second: bps,
            bytes_total: 1,
            ..TestFigures::empty(2)
        }
    }

    /// A cell with the given repeats, CPU s/GB and p99.
    pub(crate) fn cell(batch: u64, reps: &[f64], cpu: f64, p99: f64) -> CellRecord {
        let mut c = Cell::default();
        c.knobs.insert(Knob::Batch, Value::Num(batch));
        let mut r = CellRecord::new(0, &c, reps.iter().map(|b| fig(*b)).collect(), 1.0);
        r.cpu_s_per_gb = Some(cpu);
        r.p99_loaded_ms = Some(p99);
        r
    }

    #[test]
    fn spread_is_measured_from_repeats_or_stated() {
        let cells = [
            cell(8, &[100e6, 104e6], 5.0, 10.0),  // 4%
            cell(16, &[100e6, 102e6], 5.0, 10.0), // 2%
            cell(32, &[100e6, 110e6], 5.0, 10.0), // ~9.5%
        ];
        let n = noise(&cells, 5.0);
        assert!(n.measured);
        assert_eq!(n.cells, 3);
        assert!((n.percent - 4.0 / 1.02).abs() < 0.01, "{n:?}");
        assert!(
            (n.max_percent.unwrap_or(0.0) - 10.0 / 1.05).abs() < 0.01,
            "{n:?}"
        );
        let single = [cell(8, &[100e6], 5.0, 10.0)];
        let n = noise(&single, 5.0);
        assert!(!n.measured && n.percent == 5.0 && n.max_percent.is_none());
    }

    #[test]
    fn ties_break_on_cpu_then_latency_and_a_clear_winner_wins() {
        let stated = Noise {
            percent: 5.0,
            measured: false,
            cells: 0,
            max_percent: None,
        };
        // Three cells within 5% of the fastest: the cheapest wins, and of
        // two equally cheap ones the one with the lower p99.
        let tiedcells = [
            cell(8, &[190e6], 9.0, 20.0),  // fastest, dearest
            cell(16, &[185e6], 4.0, 30.0), // cheap, slow to answer
            cell(32, &[183e6], 4.0, 15.0), // cheap, quick: the pick
            cell(64, &[150e6], 1.0, 5.0),  // cheapest but clearly slower
        ];
        let refs: Vec<&CellRecord> = tiedcells.iter().collect();
        let c = choose(&refs, &stated, None).expect("choice");
        assert_eq!(c.fastest.key, "batch=8");
        assert_eq!(c.pick.key, "batch=32");
        let keys: Vec<&str> = c.ties.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["batch=32", "batch=16", "batch=8"]);
        // A clear winner (beyond the spread) is picked despite its cost.
        let clear = [cell(8, &[300e6], 9.0, 20.0), cell(16, &[185e6], 1.0, 5.0)];
        let refs: Vec<&CellRecord> = clear.iter().collect();
        let c = choose(&refs, &stated, None).expect("choice");
        assert_eq!(c.pick.key, "batch=8");
        assert_eq!(c.ties.len(), 1);
        assert!(choose(&[], &stated, None).is_none());
        // A link that capped the cells at ~90 Mbit/s: a cell 8% below the
        // fastest is beyond the spread but capped too: a tie.
        let capped = [cell(8, &[95e6], 9.0, 20.0), cell(16, &[87.5e6], 1.0, 5.0)];
        let refs: Vec<&CellRecord> = capped.iter().collect();
        let link = LinkVerdict {
            rate_bps: 100e6,
            ceiling_bps: 95e6,
            ceiling_basis: String::new(),
            limited: true,
            all_tied: true,
        };
        let c = choose(&refs, &stated, Some(&link)).expect("choice");
        assert_eq!(c.pick.key, "batch=16");
        assert_eq!(c.ties.len(), 2);
    }
}
