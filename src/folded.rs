//! --folded FILE: off-CPU stacks in folded form (`frame;frame;... weight`,
//! root first, weighted by off-CPU nanoseconds), as flamegraph.pl, inferno
//! and speedscope load them. Stacks are summed over the whole run; the file
//! is written again at each deactivation of keytime and when proc_image
//! ends, every time as a new private file (a symlink put there meanwhile is
//! refused).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::output::Sink;
use crate::record::Record;

pub struct FoldedWriter {
    path: PathBuf,
    /// folded stack -> off-CPU ns
    stacks: BTreeMap<String, u64>,
    /// stacks added since the file was last written
    dirty: bool,
}

impl FoldedWriter {
    /// Create the file now, so that a bad path fails at start.
    pub fn create(path: &Path) -> Result<Self> {
        crate::sys::create_private_file(path, "--folded")?;
        Ok(FoldedWriter {
            path: path.to_owned(),
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
        let file = crate::sys::create_private_file(&self.path, "--folded")?;
        let mut out = BufWriter::new(file);
        for line in self.lines() {
            writeln!(out, "{line}")?;
        }
        out.flush()
            .with_context(|| format!("--folded: cannot write {}", self.path.display()))?;
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
