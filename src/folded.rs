//! --folded FILE: off-CPU stacks in folded form (`frame;frame;... weight`,
//! root first, weighted by off-CPU nanoseconds), as flamegraph.pl, inferno
//! and speedscope load them. Stacks are summed over the whole run; the file
//! is written again at each deactivation of keytime and when proc_image
//! ends, every time as a new private file (a symlink put there meanwhile is
//! refused). `--flamegraph FILE.svg` renders the same stacks as an
//! off-CPU flame graph with inferno, at the same times.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::output::Sink;
use crate::record::Record;

pub struct FoldedWriter {
    /// --folded
    path: Option<PathBuf>,
    /// --flamegraph (only built with the flamegraph feature)
    #[cfg_attr(not(feature = "flamegraph"), allow(dead_code))]
    svg: Option<PathBuf>,
    /// folded stack -> off-CPU ns
    stacks: BTreeMap<String, u64>,
    /// stacks added since the file was last written
    dirty: bool,
}

impl FoldedWriter {
    /// Create the files now, so that a bad path fails at start.
    pub fn create(path: Option<&Path>, svg: Option<&Path>) -> Result<Self> {
        if let Some(p) = path {
            crate::sys::create_private_file(p, "--folded")?;
        }
        if let Some(p) = svg {
            if !cfg!(feature = "flamegraph") {
                anyhow::bail!(
                    "--flamegraph: this proc_image is built without the flamegraph feature (inferno is CDDL-licensed, proc_image GPL-2.0); render --folded {} with flamegraph.pl or inferno-flamegraph, or build with --features flamegraph",
                    path.map_or("FILE".into(), |f| f.display().to_string())
                );
            }
            crate::sys::create_private_file(p, "--flamegraph")?;
        }
        Ok(FoldedWriter {
            path: path.map(Path::to_owned),
            svg: svg.map(Path::to_owned),
            stacks: BTreeMap::new(),
            dirty: false,
        })
    }

    /// Add one record's stack, if it has one.
    pub fn add(&mut self, rec: &Record) {
        if let Some((stack, ns)) = rec.body.folded(rec) {
            *self.stacks.entry(stack).or_default() += ns;
            self.dirty = true;
        }
    }

    /// The folded lines, in stack order.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.stacks.iter().map(|(s, ns)| format!("{s} {ns}"))
    }

    fn write(&mut self) -> Result<()> {
        if let Some(path) = &self.path {
            let file = crate::sys::create_private_file(path, "--folded")?;
            let mut out = BufWriter::new(file);
            for line in self.lines() {
                writeln!(out, "{line}")?;
            }
            out.flush()
                .with_context(|| format!("--folded: cannot write {}", path.display()))?;
        }
        #[cfg(feature = "flamegraph")]
        if let Some(path) = &self.svg {
            let file = crate::sys::create_private_file(path, "--flamegraph")?;
            let mut out = BufWriter::new(file);
            let lines: Vec<String> = self.lines().collect();
            let mut opts = inferno::flamegraph::Options::default();
            opts.title = "Off-CPU time".into();
            opts.count_name = "ns".into();
            opts.colors =
                inferno::flamegraph::Palette::Basic(inferno::flamegraph::color::BasicPalette::Io);
            // no stacks: inferno still writes an SVG that says so
            let drawn = inferno::flamegraph::from_lines(
                &mut opts,
                lines.iter().map(String::as_str),
                &mut out,
            );
            if !lines.is_empty() {
                drawn.with_context(|| format!("--flamegraph: cannot write {}", path.display()))?;
            }
            out.flush()
                .with_context(|| format!("--flamegraph: cannot write {}", path.display()))?;
        }
        self.dirty = false;
        Ok(())
    }
}

impl Sink for FoldedWriter {
    fn record(&mut self, rec: &Record) {
        self.add(rec);
    }
    fn deactivated(&mut self, collectors: &[&'static str]) {
        if self.dirty && collectors.contains(&"keytime") {
            if let Err(e) = self.write() {
                eprintln!("proc_image: {e:#}");
            }
        }
    }
    fn finish(&mut self) -> Result<()> {
        self.write()
    }
}

/// A frame's name as one folded element: `;` separates frames, so it is
/// replaced; a kernel frame is marked `_[k]` (flame graph tools color it).
pub fn element(name: &str, kernel: bool) -> String {
    let name = name.replace(';', ":");
    if kernel {
        format!("{name}_[k]")
    } else {
        name
    }
}
