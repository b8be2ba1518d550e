//! `tunbench sweep`, `tunbench tune` and `tunbench report`: walk a grid of
//! tunneld and traffic settings ([`profile`], [`knobs`]), measure each cell
//! in the lab or against real hosts ([`runner`] dispatches to
//! [`lab_runner`] or [`remote`], which share [`cells`]), store one
//! JSON line per cell so an interrupted sweep resumes ([`results`]), pick
//! the best cell under latency and CPU limits ([`tune`]), and turn results
//! into a capacity-planning report ([`report`]).

pub mod cells;
pub mod choose;
pub mod knobs;
pub mod lab_runner;
pub mod plan;
pub mod profile;
pub mod remote;
pub mod report;
pub mod results;
pub mod runner;
pub mod tune;

pub use knobs::{Cell, Knob, Value};
pub use profile::{SweepError, SweepProfile};
pub use results::{CellRecord, SweepMeta, SweepResults};
pub use runner::{run, Progress, RunError, SweepOptions};
pub use tune::{Constraints, TuneError};
