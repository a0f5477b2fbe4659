//! The node's durable state: the last coordinator term it started, and the
//! node tag it chose after a collision.

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

/// The file `tag` in the state directory, holding one decimal `u16`: the
/// node tag this node took when an older member had its tag (see
/// [`crate::node::tags`]). Used at the next start instead of the default
/// hash, so a collision is resolved once, not at every start.
#[derive(Debug)]
pub struct TagStore {
    dir: PathBuf,
}

impl TagStore {
    /// Opens (creating) `dir` and reads the saved tag, if any.
    pub fn open(dir: &Path) -> io::Result<(TagStore, Option<u16>)> {
        fs::create_dir_all(dir)?;
        let store = TagStore { dir: dir.to_path_buf() };
        let tag = match fs::read_to_string(store.file()) {
            Ok(text) => Some(text.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold a node tag (0 to 65535)", store.file().display()),
                )
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok((store, tag))
    }

    fn file(&self) -> PathBuf {
        self.dir.join("tag")
    }

    /// Saves `tag` durably, as [`TermStore::save`] saves a term.
    pub fn save(&self, tag: u16) -> io::Result<()> {
        let tmp = self.dir.join("tag.tmp");
        let mut f = File::create(&tmp)?;
        writeln!(f, "{tag}")?;
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

    #[test]
    fn a_saved_tag_is_read_back_beside_the_term() {
        let dir = std::env::temp_dir().join(format!("swimlock-state-tag-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (store, tag) = TagStore::open(&dir).unwrap();
        assert_eq!(tag, None);
        store.save(7).unwrap();
        store.save(65_535).unwrap();
        TermStore::open(&dir).unwrap().0.save(3).unwrap();
        assert_eq!(TagStore::open(&dir).unwrap().1, Some(65_535));
        assert_eq!(TermStore::open(&dir).unwrap().1, 3);
        fs::write(dir.join("tag"), "70000").unwrap();
        assert_eq!(TagStore::open(&dir).unwrap_err().kind(), io::ErrorKind::InvalidData);
        fs::remove_dir_all(&dir).unwrap();
    }
}
