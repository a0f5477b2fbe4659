//! The node's durable state: the last coordinator term it started.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The file `term` in the state directory, holding one decimal `u32`.
#[derive(Debug)]
pub struct TermStore {
    dir: PathBuf,
}

impl TermStore {
    /// Opens (creating) `dir` and reads the last saved term (0 if none).
    pub fn open(dir: &Path) -> io::Result<(TermStore, u32)> {
        fs::create_dir_all(dir)?;
        let store = TermStore { dir: dir.to_path_buf() };
        let term = match fs::read_to_string(store.file()) {
            Ok(text) => text.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold a term", store.file().display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok((store, term))
    }

    fn file(&self) -> PathBuf {
        self.dir.join("term")
    }

    /// Saves `term` durably: write a temporary file, fsync, rename over the
    /// old one, fsync the directory. A crash leaves the old or the new term.
    pub fn save(&self, term: u32) -> io::Result<()> {
        let tmp = self.dir.join("term.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{term}")?;
        f.sync_all()?;
        fs::rename(&tmp, self.file())?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_term_is_read_back() {
        let dir = std::env::temp_dir().join(format!("swimlock-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (store, term) = TermStore::open(&dir).unwrap();
        assert_eq!(term, 0);
        store.save(41).unwrap();
        store.save(42).unwrap();
        assert_eq!(TermStore::open(&dir).unwrap().1, 42);
        fs::write(dir.join("term"), "garbage").unwrap();
        assert_eq!(TermStore::open(&dir).unwrap_err().kind(), io::ErrorKind::InvalidData);
        fs::remove_dir_all(&dir).unwrap();
    }
}
