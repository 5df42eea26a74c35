//! `cloud-hub device add|list|revoke` and `cloud-hub token
//! create|list|revoke`: they change the hub's `identity.json` in its
//! store directly (the hub need not run; a running one reads the change
//! within a second and cuts a revoked device off). Whoever may write the
//! hub's store is its administrator.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use conveyor_shared::DeviceId;

use crate::config::HubConfig;
use crate::identity::{change, file, Role};

/// Which hub's store.
#[derive(Debug, clap::Args)]
pub struct StoreArg {
    /// The hub config whose `store.path` holds the identities.
    #[arg(short, long, conflicts_with = "store", env = "CONVEYOR_HUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// The hub's store directory (default: `hub-data`, as `serve` without a config).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

impl StoreArg {
    fn path(&self) -> Result<PathBuf> {
        Ok(file::path(&self.dir()?))
    }

    /// The store directory.
    pub fn dir(&self) -> Result<PathBuf> {
        Ok(match (&self.config, &self.store) {
            (Some(c), _) => {
                HubConfig::load(c)
                    .map_err(|e| anyhow!("{}: {e}", c.display()))?
                    .store
                    .path
            }
            (None, Some(s)) => s.clone(),
            (None, None) => HubConfig::default().store.path,
        })
    }
}

fn when(us: i64) -> String {
    let s = us.div_euclid(1_000_000);
    format!("{s} (unix s)")
}

/// Writes `text` to a new file at `path`, mode 0600, never over one.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot write the secret to {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

/// `device add`: a new device (or, with `rotate`, a new secret for one),
/// its secret written to `<out>/<id>.secret`.
pub fn device_add(store: &StoreArg, id: &str, out: &Path, rotate: bool) -> Result<()> {
    let device = DeviceId::new(id).map_err(|e| anyhow!("device id {id:?}: {e}"))?;
    let path = store.path()?;
    let secret_file = out.join(format!("{device}.secret"));
    if secret_file.exists() {
        bail!(
            "{} exists: move it away first (a secret file is never overwritten)",
            secret_file.display()
        );
    }
    let s = change::add_device(&path, &device, rotate).map_err(|e| match e {
        change::ChangeError::DeviceExists(_) => anyhow!(
            "device {device} exists: give --rotate for a new secret (the old one stops working)"
        ),
        e => e.into(),
    })?;
    std::fs::create_dir_all(out).ok();
    write_secret(&secret_file, &s)?;
    println!(
        "device {device} added; its secret is in {} (mode 0600, shown nowhere else).\n\
         Give the agent that file, and in its agent.toml:\n\n  [uplink]\n  password_file = {:?}",
        secret_file.display(),
        secret_file.display().to_string()
    );
    // With the hub's own CA: the file the agent pins, beside the secret.
    let ca = crate::tls::ca_cert_path(&store.dir()?);
    if ca.exists() {
        let copy = out.join("hub-ca.pem");
        std::fs::copy(&ca, &copy)
            .with_context(|| format!("cannot copy the hub's CA to {}", copy.display()))?;
        println!(
            "  ca_file = {:?}    # the hub's CA; with url = \"mqtts://...\"",
            copy.display().to_string()
        );
    }
    println!();
    Ok(())
}

pub fn device_list(store: &StoreArg) -> Result<()> {
    let ids = file::read(&store.path()?)?;
    if ids.devices.is_empty() {
        println!("no devices (add one with `cloud-hub device add <id>`)");
    }
    for (id, d) in &ids.devices {
        match d.revoked_us {
            Some(r) => println!("{id}\trevoked at {}", when(r)),
            None => println!("{id}\tadded at {}", when(d.created_us)),
        }
    }
    Ok(())
}

pub fn device_revoke(store: &StoreArg, id: &str) -> Result<()> {
    change::revoke_device(&store.path()?, id)?;
    println!("device {id} revoked: refused at its next connect, and cut off within a second if a hub is running with this store");
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make an API token; it is printed once, and stored only hashed.
    Create {
        /// What the token is for (unique; shown in the audit log).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        #[command(flatten)]
        store: StoreArg,
    },
    /// The tokens: name, role, when made or revoked.
    List {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Revoke a token by its name.
    Revoke {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

pub fn token(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create { name, role, store } => {
            let t = change::create_token(&store.path()?, &name, role)?;
            eprintln!("token {name} ({role}) made; it is shown this once:");
            println!("{t}");
        }
        TokenCommand::List { store } => {
            let ids = file::read(&store.path()?)?;
            if ids.tokens.is_empty() {
                println!(
                    "no tokens (make one with `cloud-hub token create --name NAME --role admin`)"
                );
            }
            for (name, t) in &ids.tokens {
                match t.revoked_us {
                    Some(r) => println!("{name}\t{}\trevoked at {}", t.role, when(r)),
                    None => println!("{name}\t{}\tmade at {}", t.role, when(t.created_us)),
                }
            }
        }
        TokenCommand::Revoke { name, store } => {
            change::revoke_token(&store.path()?, &name)?;
            println!("token {name} revoked");
        }
    }
    Ok(())
}
