//! Connection profiles: named addresses, tokens and TLS files in
//! `$XDG_CONFIG_HOME/raftstream/config.toml` (`~/.config/raftstream/` when
//! XDG_CONFIG_HOME is unset), one of them current.
//!
//! ```toml
//! current = "prod"
//!
//! [profiles.prod]
//! addr = "10.0.0.1:50051,10.0.0.2:50051"
//! token = "rst_..."
//! tls_ca = "/etc/raftstream/certs/ca.pem"
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::bail;

/// The profile used when none is current and `--profile` is not given,
/// as before profiles could be made current.
const FALLBACK_PROFILE: &str = "default";

#[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
pub struct ProfileFile {
    /// The profile used when `--profile` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(serde::Serialize, serde::Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// Where the profiles live, from the values of XDG_CONFIG_HOME and HOME.
/// The XDG base directory spec ignores a relative XDG_CONFIG_HOME.
pub fn config_path(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let base = xdg_config_home
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| home.map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("raftstream").join("config.toml"))
}

/// [`config_path`] of this process's environment.
pub fn default_config_path() -> anyhow::Result<PathBuf> {
    config_path(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
    .context("neither XDG_CONFIG_HOME nor HOME is set: no place for profiles")
}

impl ProfileFile {
    /// The profiles at `path`; none when the file does not exist.
    pub fn load(path: &Path) -> anyhow::Result<ProfileFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ProfileFile::default());
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Replaces the file at `path` at once (a crash leaves the old file or
    /// the new, never half of one), readable by its owner only: it holds
    /// tokens. Its directory is created, owner-only, when missing.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .context("the profiles' path has no directory")?;
        if !dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = toml::to_string_pretty(self).context("writing the profiles as TOML")?;
        // tempfile creates the file with mode 0600 on Unix.
        let mut file = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.as_file().sync_all())
            .with_context(|| format!("writing {}", file.path().display()))?;
        file.persist(path)
            .with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// The profile to connect with: `requested` (`--profile`), else the
    /// current one, else the one named "default" if there is one.
    pub fn select(
        &self,
        requested: Option<&str>,
        path: &Path,
    ) -> anyhow::Result<Option<(String, Profile)>> {
        let name = match (requested, self.current.as_deref()) {
            (Some(name), _) | (None, Some(name)) => name,
            (None, None) => {
                return Ok(self
                    .profiles
                    .get(FALLBACK_PROFILE)
                    .map(|p| (FALLBACK_PROFILE.to_string(), p.clone())));
            }
        };
        match self.profiles.get(name) {
            Some(profile) => Ok(Some((name.to_string(), profile.clone()))),
            None => bail!(
                "no profile {name:?} in {}; `raftstream profile list` shows the profiles",
                path.display()
            ),
        }
    }

    /// The name of the profile used without `--profile`.
    pub fn in_use(&self) -> Option<&str> {
        match &self.current {
            Some(name) => Some(name),
            None => self
                .profiles
                .contains_key(FALLBACK_PROFILE)
                .then_some(FALLBACK_PROFILE),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_path_follows_xdg_config_home_else_home() {
        assert_eq!(
            config_path(Some("/xdg".into()), Some("/home/me".into())),
            Some(PathBuf::from("/xdg/raftstream/config.toml"))
        );
        assert_eq!(
            config_path(None, Some("/home/me".into())),
            Some(PathBuf::from("/home/me/.config/raftstream/config.toml"))
        );
        // Relative (and empty) XDG_CONFIG_HOME is ignored, as the spec says.
        assert_eq!(
            config_path(Some("".into()), Some("/home/me".into())),
            Some(PathBuf::from("/home/me/.config/raftstream/config.toml"))
        );
        assert_eq!(
            config_path(Some("rel".into()), Some("/home/me".into())),
            Some(PathBuf::from("/home/me/.config/raftstream/config.toml"))
        );
        assert_eq!(config_path(None, None), None);
    }

    fn file(current: Option<&str>, names: &[&str]) -> ProfileFile {
        ProfileFile {
            current: current.map(String::from),
            profiles: names
                .iter()
                .map(|name| {
                    let profile = Profile {
                        addr: Some(format!("{name}:50051")),
                        ..Profile::default()
                    };
                    (name.to_string(), profile)
                })
                .collect(),
        }
    }

    #[test]
    fn the_requested_profile_wins_then_the_current_then_default() {
        let path = Path::new("/p/config.toml");
        let selected = |f: &ProfileFile, requested| {
            f.select(requested, path)
                .unwrap()
                .map(|(name, profile)| (name, profile.addr.unwrap()))
        };
        let both = file(Some("prod"), &["default", "prod", "staging"]);
        assert_eq!(
            selected(&both, Some("staging")),
            Some(("staging".into(), "staging:50051".into()))
        );
        assert_eq!(
            selected(&both, None),
            Some(("prod".into(), "prod:50051".into()))
        );
        let no_current = file(None, &["default", "prod"]);
        assert_eq!(
            selected(&no_current, None),
            Some(("default".into(), "default:50051".into()))
        );
        assert_eq!(no_current.in_use(), Some("default"));
        assert_eq!(selected(&file(None, &["prod"]), None), None);
        assert_eq!(file(None, &["prod"]).in_use(), None);

        let missing = both.select(Some("nope"), path).unwrap_err().to_string();
        assert!(
            missing.contains("no profile \"nope\" in /p/config.toml"),
            "{missing}"
        );
        let stale = file(Some("gone"), &["prod"]).select(None, path);
        assert!(stale.is_err());
    }

    #[test]
    fn profiles_survive_a_save_and_load_in_an_owner_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raftstream").join("config.toml");
        assert_eq!(ProfileFile::load(&path).unwrap(), ProfileFile::default());
        let mut profiles = file(Some("prod"), &["prod"]);
        profiles.profiles.get_mut("prod").unwrap().token = Some("rst_secret".into());
        profiles.save(&path).unwrap();
        assert_eq!(ProfileFile::load(&path).unwrap(), profiles);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("current = \"prod\""), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
    }

    #[test]
    fn files_written_by_hand_in_the_old_layout_still_load() {
        let old: ProfileFile = toml::from_str(
            "[profiles.default]\naddr = \"127.0.0.1:50051\"\ntoken = \"rst_x\"\n\
             tls_ca = \"/etc/raftstream/certs/ca.pem\"\n",
        )
        .unwrap();
        assert_eq!(old.current, None);
        assert_eq!(old.in_use(), Some("default"));
        assert_eq!(
            old.profiles["default"].tls_ca,
            Some(PathBuf::from("/etc/raftstream/certs/ca.pem"))
        );
    }
}
