//! Output shared by the subcommands: one JSON value a line (`--json`).

use std::io::Write;

use serde::Serialize;

pub(super) fn print_json(out: &mut dyn Write, value: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}
