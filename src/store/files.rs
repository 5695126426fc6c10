//! The store's files on disk: the folder is owner-only (0700) and so is every file in it
//! (0600), whatever the process umask. sled creates its files with the umask's mode, so the
//! modes are set after it opened them; the folder's mode is what keeps files sled creates
//! later private.

use std::path::{Path, PathBuf};

use super::StoreError;

/// Mode of the store folder and every folder in it.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// Mode of every file in the store folder (and of other secret files the bridge writes).
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the store folder (and missing parents) owner-only, or makes an existing one
/// owner-only.
pub fn prepare_dir(path: &Path) -> Result<(), StoreError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(path).map_err(io(path))?;
    set_mode(path, true)
}

/// Makes the folder and everything in it owner-only.
pub(super) fn restrict(path: &Path) -> Result<(), StoreError> {
    set_mode(path, true)?;
    for entry in std::fs::read_dir(path).map_err(io(path))? {
        let entry = entry.map_err(io(path))?;
        let child = entry.path();
        let kind = entry.file_type().map_err(io(&child))?;
        if kind.is_dir() {
            restrict(&child)?;
        } else if kind.is_file() {
            set_mode(&child, false)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, dir: bool) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if dir { DIR_MODE } else { FILE_MODE };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _dir: bool) -> Result<(), StoreError> {
    Ok(())
}

/// What is readable or writable by others than the owner among `path` (a file, or a folder
/// and everything in it), as (path, mode); nothing when it does not exist.
pub fn loose_permissions(path: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    #[cfg(unix)]
    collect_loose(path, &mut out);
    out
}

#[cfg(unix)]
fn collect_loose(path: &Path, out: &mut Vec<(PathBuf, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        out.push((path.to_owned(), mode));
    }
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            collect_loose(&entry.path(), out);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::{DEFAULT_CACHE_BYTES, Store, test_key};

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn store_folder_and_files_are_owner_only() {
        let parent = tempfile::tempdir().unwrap();
        let existing = parent.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(existing.join("stray"), b"x").unwrap();
        std::fs::set_permissions(
            existing.join("stray"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        for dir in [parent.path().join("new/nested"), existing] {
            let s = Store::open(&dir, test_key(), DEFAULT_CACHE_BYTES).unwrap();
            s.put_user(&crate::store::UserRecord {
                user_id: "@alice:hs".into(),
                management_room: None,
                shown_requests: Vec::new(),
            })
            .unwrap();
            s.flush().await.unwrap();
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
            let loose = super::loose_permissions(&dir);
            assert!(loose.is_empty(), "{loose:?}");
            let mut files = 0;
            for e in walk(&dir) {
                let m = mode(&e);
                if e.is_dir() {
                    assert_eq!(m, 0o700, "{}", e.display());
                } else {
                    files += 1;
                    assert_eq!(m, 0o600, "{}", e.display());
                }
            }
            assert!(files > 0, "sled wrote files");
        }
    }

    #[test]
    fn loose_permissions_names_what_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("registration.yaml");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(super::loose_permissions(&f), vec![(f.clone(), 0o640)]);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(super::loose_permissions(&f).is_empty());
        assert!(super::loose_permissions(&dir.path().join("missing")).is_empty());
    }

    pub(crate) fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
        out
    }
}
