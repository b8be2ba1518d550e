//! The `tunbench sweep`, `tunbench tune` and `tunbench report` subcommands
//! (argument structs, the indicatif progress display, output files).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tunbench::sweep::{self, report, results, tune, CellRecord, Constraints, SweepProfile};
use tunneld::units::format_rate;

/// `tunbench sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Sweep profile (YAML, `kind: sweep`).
    #[arg(long)]
    profile: PathBuf,
    /// Results folder (sweep.json, cells.jsonl); default sweep-results/<name>.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue an interrupted sweep: skip cells already in cells.jsonl.
    #[arg(long)]
    resume: bool,
    /// tunneld binary (default: next to tunbench, else PATH).
    #[arg(long)]
    tunneld: Option<PathBuf>,
    /// Seed of the WAN emulator's random loss and jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// After the sweep, pick the best cell (needs --max-p99-ms and --max-cores)
    /// and write it to <out>/tuned.yaml.
    #[arg(long, requires_all = ["max_p99_ms", "max_cores"])]
    tune: bool,
    /// With --tune: highest p99 RTT under load, ms.
    #[arg(long, value_parser = positive, allow_hyphen_values = true)]
    max_p99_ms: Option<f64>,
    /// With --tune: most CPU cores per gateway (carrying the rate each way).
    #[arg(long, value_parser = positive, allow_hyphen_values = true)]
    max_cores: Option<f64>,
}

/// A positive number (limits: a negative or zero limit would refuse
/// every cell without saying why).
fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("must be a positive number, not {s}"));
    }
    Ok(v)
}

/// `tunbench tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// A sweep's cells.jsonl (its sweep.json must sit next to it), or the folder.
    #[arg(long)]
    results: PathBuf,
    /// Highest p99 RTT under load, ms.
    #[arg(long, value_parser = positive, allow_hyphen_values = true)]
    max_p99_ms: f64,
    /// Most CPU cores per gateway, for a gateway carrying the cell's rate in
    /// each direction (the unit of the report's plan).
    #[arg(long, value_parser = positive, allow_hyphen_values = true)]
    max_cores: f64,
    /// Where to write the tunneld profile.
    #[arg(long, default_value = "profiles/tuned.yaml")]
    out: PathBuf,
}

/// Report formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Markdown, for review.
    Md,
    /// One self-contained HTML page with SVG charts.
    Html,
}

/// `tunbench report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Folder with a sweep's results and/or a lab run's results.json.
    dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "md")]
    format: Format,
    /// Output file (default DIR/report.md or DIR/report.html).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A per-pair throughput measured elsewhere (e.g. `4.2G` on the
    /// production gateways): the plan uses it instead of the sweep's own.
    #[arg(long, value_parser = rate_arg)]
    pair_rate: Option<u64>,
    /// Where --pair-rate was measured (shown beside it).
    #[arg(long, requires = "pair_rate")]
    pair_rate_source: Option<String>,
    /// An HA lab run's folder (`tunbench lab` with an `ha:` scenario, e.g.
    /// profiles/lab-ha.yaml): the plan uses its measured per-pair rate
    /// (unless --pair-rate is given) and states its failover and drain
    /// figures.
    #[arg(long)]
    ha: Option<PathBuf>,
    /// Instead of a whole report, refill the generated blocks of this
    /// Markdown file (`<!-- tunbench:NAME -->` … `<!-- /tunbench:NAME -->`,
    /// NAME one of conditions, systems, decision, knob:KNOB, timeline,
    /// latency, plan, cells) in place.
    #[arg(long, conflicts_with_all = ["out", "format"])]
    fill: Option<PathBuf>,
}

fn rate_arg(s: &str) -> Result<u64, String> {
    tunbench::profile_units::check(
        &format!(
            "wan: {{rate: {}}}",
            serde_json::to_string(s).map_err(|e| e.to_string())?
        ),
        tunbench::profile_units::SCENARIO_FIELDS,
    )
    .map_err(|p| p.message)?;
    match tunneld::units::parse_rate(s) {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

/// indicatif display: cells done/total, ETA, the current cell and its live rate.
/// Lines (notes, finished cells) go to stderr also when the bar is hidden
/// (not a terminal).
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn line(&self, text: String) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

impl sweep::Progress for Bar {
    fn begin(&self, total: usize, done: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        self.bar.reset_eta();
    }
    fn note(&self, line: &str) {
        self.line(format!("  {line}"));
    }
    fn cell(&self, index: usize, cell: &sweep::Cell) {
        self.bar
            .set_prefix(format!("#{} {}", index + 1, cell.key()));
        self.bar.set_message("starting tunneld");
    }
    fn live(&self, bps: f64) {
        self.bar.set_message(format!("live {}", format_rate(bps)));
    }
    fn done(&self, rec: &CellRecord) {
        self.bar.inc(1);
        self.line(format!(
            "  cell {:>3} {:<40} {:>12}  p99 {:>7}  {} cores per gateway{}",
            rec.index + 1,
            rec.key,
            format_rate(rec.bits_per_second),
            rec.p99_loaded_ms
                .map_or("–".into(), |v| format!("{v:.1} ms")),
            rec.cpu_cores.map_or("–".into(), |v| format!("{v:.2}")),
            rec.error
                .as_deref()
                .map(|e| format!("  ({e})"))
                .unwrap_or_default()
        ));
    }
}

fn find_tunneld(explicit: Option<&PathBuf>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.clone());
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("tunneld")))
        .filter(|p| p.is_file());
    sibling.or_else(|| tunbench::lab::systems::which("tunneld"))
}

/// Runs `tunbench sweep`.
pub fn sweep_cmd(a: &SweepArgs) -> anyhow::Result<ExitCode> {
    let profile = SweepProfile::load(&a.profile)?;
    if profile.file.mode == sweep::profile::Mode::Lab {
        tunbench::topo::check_privileges()?;
        tunbench::topo::install_signal_cleanup()?;
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("sweep-results").join(&profile.file.name));
    eprintln!(
        "tunbench sweep: {} ({} cells, about {} s) -> {}",
        profile.file.name,
        profile.cells.len(),
        profile.estimated_time().as_secs(),
        out.display()
    );
    let bar = ProgressBar::new(profile.cells.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} cells, ETA {eta}  {prefix}  {msg}",
        )
        .context("progress template")?,
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let opts = sweep::SweepOptions {
        out_dir: out.clone(),
        resume: a.resume,
        tunbench_bin: std::env::current_exe().context("locating the tunbench binary")?,
        tunneld_bin: find_tunneld(a.tunneld.as_ref()),
        seed: a.seed,
    };
    let records = sweep::run(&profile, &opts, &Bar { bar: bar.clone() })?;
    bar.finish_and_clear();
    let measured = records.iter().filter(|r| r.measured()).count();
    println!(
        "{measured} of {} cells measured; results in {}",
        records.len(),
        out.join(results::CELLS_FILE).display()
    );
    if a.tune {
        let c = Constraints::new(
            a.max_p99_ms.unwrap_or(f64::INFINITY),
            a.max_cores.unwrap_or(f64::INFINITY),
        )?;
        let res = results::load(&out)?;
        write_tuned(&res, &c, &out.join("tuned.yaml"))?;
    }
    Ok(if measured == records.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn write_tuned(res: &sweep::SweepResults, c: &Constraints, out: &Path) -> anyhow::Result<()> {
    let noise = sweep::choose::noise(&res.cells, res.meta.noise_percent);
    let ch = tune::pick(&res.meta, &res.cells, c, &noise)?;
    let text = tune::render(&res.meta, &res.cells, &ch, c, &noise)?;
    if let Some(d) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "picked {} ({}); tunneld profile written to {}",
        ch.pick.key,
        format_rate(ch.pick.bits_per_second),
        out.display()
    );
    for line in tune::decision(&res.meta, &res.cells, &ch, &noise) {
        println!("  {line}");
    }
    Ok(())
}

/// Runs `tunbench tune`.
pub fn tune_cmd(a: &TuneArgs) -> anyhow::Result<ExitCode> {
    let dir = if a.results.is_dir() {
        a.results.clone()
    } else {
        a.results
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let res = results::load(&dir)?;
    let c = Constraints::new(a.max_p99_ms, a.max_cores)?;
    write_tuned(&res, &c, &a.out)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `tunbench report`.
pub fn report_cmd(a: &ReportArgs) -> anyhow::Result<ExitCode> {
    let mut opts = report::Options {
        pair_rate: a.pair_rate.map(|r| {
            (
                r as f64,
                a.pair_rate_source
                    .clone()
                    .unwrap_or_else(|| "given with --pair-rate".into()),
            )
        }),
        failover: Vec::new(),
    };
    if let Some(dir) = &a.ha {
        let ha = tunbench::lab::ha::HaReport::load(dir)
            .with_context(|| format!("--ha {}", dir.display()))?;
        let (pair, failover) = tunbench::sweep::plan::from_ha(&ha, &dir.display().to_string());
        opts.pair_rate.get_or_insert(pair);
        opts.failover = failover;
    }
    let model = report::load(&a.dir, &opts)?;
    if let Some(f) = &a.fill {
        let template =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let text = report::markdown::fill(&template, &model, &f.display().to_string())?;
        std::fs::write(f, text).with_context(|| format!("writing {}", f.display()))?;
        println!("{}", f.display());
        return Ok(ExitCode::SUCCESS);
    }
    let (text, name) = match a.format {
        Format::Md => (report::markdown::render(&model), "report.md"),
        Format::Html => (report::html::render(&model), "report.html"),
    };
    let out = a.out.clone().unwrap_or_else(|| a.dir.join(name));
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}
