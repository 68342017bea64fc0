//! A small tmpfs mounted for one test, to fill a disk for real.
//!
//! [`Tmpfs::mount`] returns `None` after printing why when `mount` fails
//! (not root, no tmpfs), so the test returns early — unless
//! `RUNLEDGER_REQUIRE_TMPFS=1` (CI), where it panics and the test fails.
//! The mount is lazily unmounted on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    path: PathBuf,
}

fn required() -> bool {
    std::env::var("RUNLEDGER_REQUIRE_TMPFS").is_ok_and(|v| v == "1")
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `16m`)
    /// on `path`, which must exist.
    pub fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        let result = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        let why = match result {
            Ok(out) if out.status.success() => {
                return Some(Tmpfs {
                    path: path.to_path_buf(),
                });
            }
            Ok(out) => format!(
                "`mount -t tmpfs` exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => format!("cannot run `mount`: {e}"),
        };
        assert!(
            !required(),
            "RUNLEDGER_REQUIRE_TMPFS=1 but no tmpfs could be mounted: {why}"
        );
        eprintln!("skipped: no tmpfs could be mounted ({why}); tests that fill a disk need root");
        None
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remounts read-only (`true`) or read-write.
    pub fn remount(&self, read_only: bool) {
        let mode = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        let out = Command::new("mount")
            .args(["-o", mode])
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -o {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The bytes free for an unprivileged writer.
    pub fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.path).unwrap();
        stat.f_bavail * stat.f_frsize
    }

    /// Writes `file` until the filesystem has about `free` bytes left (at
    /// most a page less).
    pub fn fill_leaving(&self, file: &Path, free: u64) {
        let now = self.free();
        assert!(now > free, "only {now} bytes free, {free} wanted");
        let mut left = now - free;
        let mut f = std::fs::File::create(file).unwrap();
        let chunk = vec![0xA5u8; 1 << 20];
        while left > 0 {
            let n = left.min(chunk.len() as u64);
            f.write_all(&chunk[..n as usize]).unwrap();
            left -= n;
        }
        f.sync_all().unwrap();
    }

    /// Writes `file` until the filesystem has no block left.
    pub fn fill(&self, file: &Path) {
        let mut f = std::fs::File::create(file).unwrap();
        for chunk in [1 << 20, 4096, 512, 1] {
            let bytes = vec![0xA5u8; chunk];
            loop {
                match f.write_all(&bytes) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(28) => break,
                    Err(e) => panic!("filling {}: {e}", file.display()),
                }
            }
        }
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
