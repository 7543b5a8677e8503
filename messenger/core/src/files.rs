//! Files that hold secrets: directories only their owner can enter (0700) and files only
//! their owner can read (0600), whoever creates them first.
//!
//! Every directory and file the server, the SDK and the CLI make goes through here: the
//! server's database holds the OPAQUE server secret, the key-transparency signing key and
//! every password file; a client's store holds its keys and messages (encrypted, but the
//! salt and ciphertext are still no one else's business). An existing directory or file is
//! tightened, never loosened. On platforms without Unix permissions these only create.

use std::io;
use std::path::Path;

/// Creates `dir` (and missing parents) with mode 0700 and tightens `dir` itself to 0700 if
/// it existed with looser permissions.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    tighten(dir, 0o700)
}

/// Makes sure `path` exists as a file with mode 0600 (creating it empty, with that mode
/// from the start, if missing), before a library such as SQLite opens it.
pub fn private_file(path: &Path) -> io::Result<()> {
    options(false).create(true).append(true).open(path)?;
    tighten(path, 0o600)
}

/// Tightens `path` to 0600 if it exists (a file another library created, such as SQLite's
/// `-wal` and `-shm` files).
pub fn tighten_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => tighten(path, 0o600),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` with mode 0600, replacing its contents.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = options(false).create(true).truncate(true).open(path)?;
    tighten(path, 0o600)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Creates a new file at `path` with mode 0600 and writes `bytes`; fails if anything is
/// there already, a symbolic link included (it is never followed).
pub fn create_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = options(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn options(create_new: bool) -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if create_new {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(current & mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directories_and_files_are_private_whoever_made_them() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // Made first by someone else, world-readable: tightened.
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);

        let file = dir.join("db");
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        tighten_if_exists(&dir.join("missing")).unwrap();

        write_private(&dir.join("salt"), b"x").unwrap();
        assert_eq!(mode(&dir.join("salt")), 0o600);
    }

    #[test]
    fn a_new_file_never_follows_a_planted_link() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        let link = root.path().join("download");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_new_private(&link, b"attacker's choice").is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        let dangling = root.path().join("dangling");
        std::os::unix::fs::symlink(root.path().join("nowhere"), &dangling).unwrap();
        assert!(create_new_private(&dangling, b"x").is_err());
        assert!(!root.path().join("nowhere").exists());
        let fresh = root.path().join("fresh");
        create_new_private(&fresh, b"ok").unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }
}
